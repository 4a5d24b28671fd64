"""Shared training-test settings: the smallest network that trains, and a partial recipe that
makes a derived recipe train in seconds."""

TINY_ARCHITECTURE = {"base": "default", "embed_dims": [8, 16, 32, 64], "qk_dims": [8, 16, 32, 64],
                     "depths": [1, 1, 1, 1], "decoder_dims": [16, 16, 8, 8], "skip_dims": [8]}
QUICK = {
    "architecture": TINY_ARCHITECTURE,
    "stages": [
        {"name": "coarse", "patch_size": [32, 32, 40], "epochs": 1, "samples_per_epoch": 2, "batch_size": 1},
        {"name": "fine", "patch_size": [32, 32, 40], "epochs": 1, "samples_per_epoch": 2, "batch_size": 1},
    ],
}
