"""Image input side: pp ops (big_vision string syntax), the TFDS input pipeline, and Mixup/CutMix on host batches (`mixup.py`, torch).

Modules here import TensorFlow only through `utils.tf_import`, which fixes the import order
against torch_xla (see utils/import_order.py).
"""
