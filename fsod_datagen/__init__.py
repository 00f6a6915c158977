"""Generated few-shot detection benchmarks (test and benchmark fixtures, not the runtime package).

``import fsod_d2`` never imports this package. Each module writes one benchmark family as COCO
JSON + JPEGs on real-photo backgrounds (the photos that ship with scikit-image).
"""
