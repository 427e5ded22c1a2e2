"""Choice lists of the training utilities, importable without TensorFlow.

runtime/flags.py validates the command line with these before TensorFlow loads (a typo must
fail at once); utils.optimizers, utils.schedules and utils.precision implement them.
"""

OPTIMIZERS = ("rmsprop", "sgd", "momentum", "adam", "adamw", "lamb")
SCHEDULES = ("exponential", "cosine", "piecewise", "linearcosine")
# Where exponential/cosine decay counts from: NVIDIA's end of warm-up, or automl's step 0.
SCHEDULE_ORIGINS = ("warmup_end", "start")
AMP_DTYPES = ("float16", "bfloat16")
