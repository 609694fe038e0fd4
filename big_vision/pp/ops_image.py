"""Image ops (TensorFlow, one example at a time). Default key is "image"."""

from big_vision.pp import registry, utils
from big_vision.tf_import import tf


@registry.register("decode")
@utils.in_key_out_key()
def get_decode(channels: int = 3, precise: bool = False):
    """Decode JPEG/PNG/GIF/BMP bytes to uint8 [h, w, channels]; `precise` uses the exact (PIL-equal) JPEG IDCT."""

    def _decode(image):
        if precise:
            return tf.image.decode_jpeg(image, channels=channels, dct_method="INTEGER_ACCURATE")
        return tf.io.decode_image(image, channels=channels, expand_animations=False)

    return _decode


@registry.register("resize")
@utils.in_key_out_key()
def get_resize(size, method: str = "bilinear", antialias: bool = False):
    """Resize to `size` (int or (h, w)), ignoring aspect ratio; the dtype is kept (clipped, then cast)."""
    size = utils.maybe_repeat(size, 2)

    def _resize(image):
        dtype = image.dtype
        out = tf.image.resize(image, size, method=method, antialias=antialias)
        if dtype.is_integer:
            out = tf.clip_by_value(out, dtype.min, dtype.max)
        return tf.cast(out, dtype)

    return _resize
