"""quality stage: how realistic, diverse and new synthetic images are (FID, KID, MS-SSIM, mask fidelity, the
memorization audit) and the feature extractors these are measured in."""
