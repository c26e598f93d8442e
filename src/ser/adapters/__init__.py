"""Thin adapters to the outside: S3 (minio), MLflow tracking and registry, the champion gate."""
