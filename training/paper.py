"""What the reference paper ("Blood Cells Classification with CNN") reports: its Table 1, from
``../shared/paper/`` (the paper's text and its whole table)."""

# Table 1, in the paper's order.
VARIANTS = ("basic", "dropout0.1", "dropout0.3", "3xdropout0.1", "lasso", "ridge", "ridge+dropout0.1", "vgg16")

# The paper's input (height, width): the 320x240 frames reduced 4 times. Its CNN has ~27K parameters there.
INPUT_SIZE = (60, 80)

# Table 1 ("Loss Result"): (val_loss, val_acc) by (variant, mode). The paper's validation set is the data
# set's TEST folder, so these are TEST figures.
TABLE_1: dict[tuple[str, str], tuple[float, float]] = {
    ("basic", "original"): (2.187, 0.791), ("basic", "color"): (1.578, 0.742),
    ("dropout0.1", "original"): (1.639, 0.836), ("dropout0.1", "color"): (1.028, 0.778),
    ("dropout0.3", "original"): (0.818, 0.842), ("dropout0.3", "color"): (0.696, 0.813),
    ("3xdropout0.1", "original"): (1.190, 0.794), ("3xdropout0.1", "color"): (0.797, 0.791),
    ("lasso", "original"): (0.978, 0.776), ("lasso", "color"): (0.806, 0.786),
    ("ridge", "original"): (1.190, 0.794), ("ridge", "color"): (1.489, 0.723),
    ("ridge+dropout0.1", "original"): (0.871, 0.829), ("ridge+dropout0.1", "color"): (1.254, 0.759),
    ("vgg16", "original"): (1.922, 0.383), ("vgg16", "color"): (2.703, 0.509),
}

# TEST accuracy by (variant, mode).
TEST_ACCURACY: dict[tuple[str, str], float] = {key: accuracy for key, (_, accuracy) in TABLE_1.items()}
TEST_LOSS: dict[tuple[str, str], float] = {key: loss for key, (loss, _) in TABLE_1.items()}

# The paper's best network, Dropout(0.3), the one it reports as its result: TEST accuracy by mode.
BEST_VARIANT = "dropout0.3"
BEST: dict[str, float] = {mode: acc for (variant, mode), acc in TEST_ACCURACY.items() if variant == BEST_VARIANT}
