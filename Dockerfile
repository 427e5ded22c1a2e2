# EfficientNet TF2 training image: the official TensorFlow 2.21 GPU image plus our requirements.
#   scripts/docker/build.sh efficientnet-tf2   then   scripts/docker/launch.sh efficientnet-tf2
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=1
WORKDIR /workspace/efficientnet

# requirements.txt adds the CPU wheel (tensorflow-cpu) for CI; the base image already has the
# GPU build of the same TensorFlow, so only the rest is installed here.
COPY requirements-base.txt ./
RUN python3 -m pip install -r requirements-base.txt \
 && python3 -c "import tensorflow as tf, keras; print('TensorFlow', tf.__version__, 'Keras', keras.__version__)"

COPY . .
