"""Bad --mparams values: one per config key type (and range) of the v1/v2 configs; each is a
ConfigError naming the key, before anything is built or written (tests/config/test_loader.py
checks the loader, tests/test_main.py the command line)."""

BAD_MPARAMS = [
    ("width_coefficient=abc", r"width_coefficient='abc' must be a number"),  # float key, str
    ("width_coefficient=-1", r"width_coefficient must be a positive number, got -1"),
    ("depth_coefficient=0", r"depth_coefficient must be a positive number, got 0"),
    ("width_coefficient=inf", r"width_coefficient='inf' must be a number"),
    ("dropout_rate=5", r"dropout_rate must be in \[0, 1\), got 5"),
    ("drop_connect_rate=-0.1", r"drop_connect_rate must be in \[0, 1\), got -0.1"),
    ("bn_momentum=1.0", r"bn_momentum must be in \[0, 1\), got 1.0"),
    ("bn_epsilon=0", r"bn_epsilon must be a positive number"),
    ("train_img_size=abc", r"train_img_size='abc' must be an int"),  # int key, str
    ("train_img_size=32.5", r"train_img_size=32.5 must be an int"),  # int key, float
    ("eval_img_size=0", r"eval_img_size must be a positive int, got 0"),
    ("num_classes=-3", r"num_classes must be a positive int, got -3"),
    ("stem_filters=true", r"stem_filters=True must be an int"),  # int key, bool
    ("min_depth=0", r"min_depth must be None or a positive int, got 0"),  # optional int
    ("include_top=1", r"include_top=1 must be true/false"),  # bool key
    ("round_down_guard=maybe", r"round_down_guard='maybe' must be true/false"),
    ("name=3", r"name=3 must be a string"),  # str key
    ("input_normalization=zscore", r"unknown input_normalization 'zscore'; choose from imagenet"),
    ("blocks=r1_k3", r"blocks='r1_k3' must be a list"),  # list key, str
    ("blocks=('r1_k3_s1',)", r"bad block string 'r1_k3_s1': missing"),
    ("activation=nope", r"unknown activation 'nope'"),
]
