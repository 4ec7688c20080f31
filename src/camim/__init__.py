"""camim: Caption-Aware Multimodal Relation Extraction with Mutual Information Maximization.

Implements CAMIM (Zhang et al., ACM MM 2024) and the extractors it plugs onto (TMR, HVPNeT) on MNRE.
"""

__version__ = "0.1.0"
