"""Deploy tooling, apart from the pipeline: cluster specs (``infra/clusters``), the Databricks bundle's
offline checks, the Databricks SDK client, and their CLI commands (``submit``, ``cluster``, ``bundle``,
``databricks``)."""
