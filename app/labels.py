"""The four leukocyte classes, in the models' output order (the data set's folders, sorted)."""

CLASSES: tuple[str, ...] = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
