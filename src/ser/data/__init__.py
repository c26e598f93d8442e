"""Speech in: corpora and their labels, audio decoding, augmentation, feature images and encoder frames, feature sets."""
