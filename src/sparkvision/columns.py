"""Column names, once: every table sparkvision reads or writes uses these."""

IMAGE_ID = "image_id"            # path relative to the input root (or as written in the manifest)
PATH = "path"                    # full URI of the file
LABEL = "label"                  # class name (the sub-folder, or the manifest's label)
LABEL_INDEX = "label_index"      # class index; its column metadata lists the class names
WIDTH, HEIGHT = "width", "height"
CONTENT = "content"              # encoded image bytes
REASON = "reason"                # why a file was rejected
FEATURES = "features"
SPLIT = "split"
FOLD = "fold"
PREDICTION = "prediction"
PROBABILITY = "probability"
PREDICTED_LABEL = "predicted_label"
CONFIDENCE = "confidence"
FEATURIZE_ERROR = "featurize_error"  # why the featurizer could not use an image
# sparkvision stream's tables
ARRIVED = "arrived_at"           # the file's modification time, as the file source lists it
PROCESSED = "processed_at"       # when its micro-batch ran
BATCH_ID = "batch_id"            # the micro-batch (the tables' partition column)
MODEL = "model"                  # the model that predicted it (a folder, or models:/NAME/VERSION)

IMAGE_COLUMNS = [IMAGE_ID, PATH, LABEL, LABEL_INDEX, WIDTH, HEIGHT, CONTENT]
REJECTED_COLUMNS = [IMAGE_ID, PATH, LABEL, REASON]
FEATURE_COLUMNS = [IMAGE_ID, PATH, LABEL, LABEL_INDEX, FEATURES]
PREDICTION_COLUMNS = [IMAGE_ID, PATH, LABEL, PREDICTED_LABEL, CONFIDENCE, PROBABILITY]
