"""TensorFlow input side: pp ops (big_vision string syntax) and the TFDS input pipeline.

Modules here import TensorFlow only through `big_vision.tf_import`, which fixes the import order
against torch_xla (see utils/import_order.py).
"""
