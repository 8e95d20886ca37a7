"""Pure functions of the cifras pipeline and the thin Prefect tasks that wrap them."""

import os

# TensorFlow's C++ start-up chatter drowns the operator's logs; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# No telemetry from the embedded Prefect server: these machines are offline by design.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
