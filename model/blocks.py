"""EfficientNet building blocks as Keras 3 layers (keras.layers / keras.ops only).

- `MBConvBlock`: inverted residual with depthwise conv (MobileNetV2, arXiv:1801.04381) and
  squeeze-excitation (arXiv:1709.01507), as in EfficientNet (arXiv:1905.11946).
- `FusedMBConvBlock`: expansion 1x1 + depthwise kxk fused into one kxk conv (EfficientNetV2,
  arXiv:2104.00298, figure 2).

Every sublayer is created in `__init__` and keeps a stable name (`expand_conv`, `expand_bn`,
`dwconv`, `bn`, `se/reduce`, `se/expand`, `project_conv`, `project_bn`): the block's own name
(`stage3_block2`) prefixes them in variable paths, so checkpoints, freezing regexes and
`model.weights.load_keras_applications_weights` rely on them. Nothing is created in `call`.
"""

from __future__ import annotations

import keras
from keras import layers, ops

# "fan_out" initializers of the TF reference (automl efficientnet_model.conv_kernel_initializer /
# dense_kernel_initializer), identical to keras.applications EfficientNet.
CONV_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
DENSE_KERNEL_INITIALIZER = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}


def conv2d(filters: int, kernel: int, strides: int = 1, name: str | None = None) -> layers.Conv2D:
    """Bias-free 'same'-padded conv with the fan-out initializer (followed by BN everywhere).

    'same' padding for stride 2 pads (k//2 - 1, k//2) on even inputs, which is exactly what
    keras.applications EfficientNet's explicit ZeroPadding2D(correct_pad) does, so the two give
    identical outputs and imported weights line up.
    """
    return layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer=CONV_KERNEL_INITIALIZER,
        name=name,
    )


@keras.saving.register_keras_serializable(package="efficientnet")
class FusedBatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that runs TF's fused kernel under the TensorFlow backend.

    Keras 3.15's layer composes moments and normalization from elementwise ops (Mul, Sub,
    SquaredDifference, Sum, forward and backward); the NVIDIA reference (Keras 2) ran
    `FusedBatchNormV3` (cuDNN on GPU, one oneDNN kernel on CPU). This layer calls that kernel for
    4-D NHWC inputs under the TensorFlow backend and falls back to the Keras layer otherwise
    (other backends, masks, synchronized or renorm BN). Variables, names, momentum and epsilon
    are the parent's, so checkpoints, EMA and keras.applications weight import are unchanged.
    Statistics stay float32 under mixed precision; float16/bfloat16 activations go into the kernel
    as they are (it accumulates in float32), so no float32 copy of the activation is made.

    NOTE: the fused kernel returns the Bessel-corrected batch variance (n / (n - 1)); the moving
    variance is updated with the biased one, as Keras 3 does, so both paths keep the same
    statistics.
    """

    # Layers built while this is False use Keras' composed path (scripts/bench_model.py
    # compares the two); not part of get_config, a loaded model always takes the fused path.
    fused_default = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused = self.fused_default

    def _use_fused(self, inputs, mask) -> bool:
        return (
            self.fused
            and keras.backend.backend() == "tensorflow"
            and mask is None
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and not self.synchronized
            and not self.renorm
            and self.scale
            and self.center
        )

    # AdvProp (model/advprop_bn.py): auxiliary statistics, routed to while `aux.active`.
    # A plain object, so neither Keras nor tf.train.Checkpoint tracks it: saved models,
    # checkpoints and weight files hold the main statistics only.
    aux = None

    def call(self, inputs, training=None, mask=None):
        if self.aux is not None and self.aux.active:
            return self.aux.call(self, inputs, training=bool(training))
        if not self._use_fused(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # only under the TensorFlow backend

        x = (
            inputs
            if inputs.dtype in (tf.float16, tf.bfloat16, tf.float32)
            else tf.cast(inputs, tf.float32)
        )
        if training and self.trainable:
            y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=self.gamma.value,
                offset=self.beta.value,
                mean=tf.zeros([0], tf.float32),
                variance=tf.zeros([0], tf.float32),
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=True,
            )
            shape = tf.shape(x)
            n = tf.cast(shape[0] * shape[1] * shape[2], tf.float32)
            variance = variance * ((n - 1.0) / tf.maximum(n, 1.0))
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            y, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=self.gamma.value,
                offset=self.beta.value,
                mean=self.moving_mean.value,
                variance=self.moving_variance.value,
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=False,
            )
        return tf.cast(y, self.compute_dtype)


def batch_norm(momentum: float, epsilon: float, name: str) -> layers.BatchNormalization:
    """BatchNormalization over channels (NHWC), fused under the TensorFlow backend.

    NOTE: momentum is the TF/Keras moving-average decay (0.99 v1, 0.9 v2); PyTorch's
    momentum = 1 - this.
    """
    return FusedBatchNormalization(axis=-1, momentum=momentum, epsilon=epsilon, name=name)


@keras.saving.register_keras_serializable(package="efficientnet")
class SqueezeExcite(layers.Layer):
    """Squeeze-and-excitation: global average pool -> 1x1 reduce -> act -> 1x1 expand -> sigmoid.

    Args:
      filters: channels of the tensor being gated.
      se_filters: channels of the bottleneck (int(block_in_ch * se_ratio), at least 1).
      activation: activation of the reduce conv (the model config's `activation`).
    """

    def __init__(self, filters: int, se_filters: int, activation: str, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.se_filters, self.activation = filters, se_filters, activation
        # 1x1 convs with bias, as the reference, so weights import 1:1.
        self.reduce = layers.Conv2D(
            se_filters,
            1,
            activation=activation,
            kernel_initializer=CONV_KERNEL_INITIALIZER,
            name="reduce",
        )
        self.expand = layers.Conv2D(
            filters,
            1,
            activation="sigmoid",
            kernel_initializer=CONV_KERNEL_INITIALIZER,
            name="expand",
        )

    def build(self, input_shape):
        pooled = (input_shape[0], 1, 1, input_shape[-1])
        self.reduce.build(pooled)
        self.expand.build(self.reduce.compute_output_shape(pooled))
        self.built = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs):
        scale = ops.mean(inputs, axis=(1, 2), keepdims=True)
        return inputs * self.expand(self.reduce(scale))

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "se_filters": self.se_filters,
            "activation": self.activation,
        }


class BaseBlock(layers.Layer):
    """Arguments and residual logic shared by MBConv and fused-MBConv.

    No argument repeats a config default: the geometry comes from the block's `BlockSpec`,
    activation and BN settings from the model config (config/defaults.py and the family
    modules), all passed by `model.efficientnet.make_block`.

    Args:
      in_ch: input channels.
      out_ch: output channels.
      kernel: kernel size of the spatial conv.
      stride: stride of the spatial conv (1 or 2).
      expand: expansion ratio.
      se_ratio: squeeze-excitation ratio of `in_ch` (0 = no SE).
      activation: activation name ("swish"/"silu", ...).
      bn_momentum: BatchNormalization moving-average momentum.
      bn_epsilon: BatchNormalization epsilon.
      drop_rate: stochastic-depth probability of dropping the residual branch (per sample);
        0 = none.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        expand: int,
        se_ratio: float,
        *,
        activation: str,
        bn_momentum: float,
        bn_epsilon: float,
        drop_rate: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.in_ch, self.out_ch, self.kernel, self.stride = in_ch, out_ch, kernel, stride
        self.expand, self.se_ratio, self.activation = expand, se_ratio, activation
        self.bn_momentum, self.bn_epsilon, self.drop_rate = bn_momentum, bn_epsilon, drop_rate
        self.hidden_ch = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        # Stochastic depth (arXiv:1603.09382): drop the whole residual branch per sample and
        # rescale by 1/(1-p) -- Dropout with a per-sample noise shape does exactly that.
        self.drop = None
        if self.use_residual and drop_rate > 0:
            self.drop = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name="drop")

    def build(self, input_shape):
        shape = input_shape
        for layer in self.branch:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, inputs):
        # `training` reaches BN/Dropout through Keras' call context; no need to thread it.
        x = inputs
        for layer in self.branch:
            x = layer(x)
        if not self.use_residual:
            return x
        if self.drop is not None:
            x = self.drop(x)
        return x + inputs

    def _squeeze_excite(self) -> SqueezeExcite | None:
        if not 0 < self.se_ratio <= 1:
            return None
        # SE width is a fraction of the block's *input* channels (automl, keras.applications).
        return SqueezeExcite(
            self.hidden_ch, max(1, int(self.in_ch * self.se_ratio)), self.activation, name="se"
        )

    def _bn(self, name: str) -> layers.BatchNormalization:
        return batch_norm(self.bn_momentum, self.bn_epsilon, name)

    def _act(self, name: str) -> layers.Activation:
        return layers.Activation(self.activation, name=name)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape

        def down(size):
            return None if size is None else -(-size // self.stride)

        return (batch, down(height), down(width), self.out_ch)

    def get_config(self):
        return {
            **super().get_config(),
            "in_ch": self.in_ch,
            "out_ch": self.out_ch,
            "kernel": self.kernel,
            "stride": self.stride,
            "expand": self.expand,
            "se_ratio": self.se_ratio,
            "activation": self.activation,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "drop_rate": self.drop_rate,
        }


@keras.saving.register_keras_serializable(package="efficientnet")
class MBConvBlock(BaseBlock):
    """Mobile inverted bottleneck: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.expand_conv = self.expand_bn = self.expand_act = None
        if self.expand != 1:
            self.expand_conv = conv2d(self.hidden_ch, 1, name="expand_conv")
            self.expand_bn = self._bn("expand_bn")
            self.expand_act = self._act("expand_activation")
        self.dwconv = layers.DepthwiseConv2D(
            self.kernel,
            strides=self.stride,
            padding="same",
            use_bias=False,
            depthwise_initializer=CONV_KERNEL_INITIALIZER,
            name="dwconv",
        )
        self.bn = self._bn("bn")
        self.act = self._act("activation")
        self.se = self._squeeze_excite()
        self.project_conv = conv2d(self.out_ch, 1, name="project_conv")
        self.project_bn = self._bn("project_bn")

        # The residual branch in call order; `build`, `call` and model.profile walk it.
        self.branch = [
            layer
            for layer in (
                self.expand_conv,
                self.expand_bn,
                self.expand_act,
                self.dwconv,
                self.bn,
                self.act,
                self.se,
                self.project_conv,
                self.project_bn,
            )
            if layer is not None
        ]


@keras.saving.register_keras_serializable(package="efficientnet")
class FusedMBConvBlock(BaseBlock):
    """Fused-MBConv: kxk expand conv -> [SE] -> 1x1 project; with expand=1 a single kxk conv.

    With expand=1 the kxk conv is the `project_conv` and is followed by BN + activation, as
    in automl effnetv2_model.FusedMBConvBlock and keras.applications EfficientNetV2.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.expand_conv = self.expand_bn = self.expand_act = self.project_act = None
        # With expand=1, SE (if any) gates the block input before the single kxk conv.
        if self.expand != 1:
            self.expand_conv = conv2d(self.hidden_ch, self.kernel, self.stride, name="expand_conv")
            self.expand_bn = self._bn("expand_bn")
            self.expand_act = self._act("expand_activation")
            self.se = self._squeeze_excite()
            self.project_conv = conv2d(self.out_ch, 1, name="project_conv")
        else:
            self.se = self._squeeze_excite()
            self.project_conv = conv2d(self.out_ch, self.kernel, self.stride, name="project_conv")
            self.project_act = self._act("project_activation")
        self.project_bn = self._bn("project_bn")

        self.branch = [
            layer
            for layer in (
                self.expand_conv,
                self.expand_bn,
                self.expand_act,
                self.se,
                self.project_conv,
                self.project_bn,
                self.project_act,
            )
            if layer is not None
        ]
