"""Encoders made before fine-tuning: the offline presets' WordPiece vocabulary and compact BERT
(:mod:`camim.pretraining.offline`) and domain-adaptive masked-LM pretraining, ``camim pretrain``
(:mod:`camim.pretraining.pretrain`). See docs/training.md.
"""
