"""Datasets, the device-resident loader and batch augmentation."""
