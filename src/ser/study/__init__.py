"""The study and what goes beyond it: networks, training, stopping rules, splits, the random search and its ranking, cross-validation, transfer, reports."""
