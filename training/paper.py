"""What the reference paper ("Blood Cells Classification with CNN") reports, where our copy states it."""

# Table 1, in the paper's order.
VARIANTS = ("basic", "dropout0.1", "dropout0.3", "3xdropout0.1", "lasso", "ridge", "ridge+dropout0.1", "vgg16")

# The paper's input (height, width): the 320x240 frames reduced 4 times. Its CNN has ~27K parameters there.
INPUT_SIZE = (60, 80)

# TEST accuracy by (variant, mode); the paper's other cells are not quoted in our copy.
TEST_ACCURACY = {("dropout0.3", "original"): 0.842, ("dropout0.3", "color"): 0.813}
