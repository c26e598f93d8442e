"""Operations: the local S3/MLflow services, the GPU guard, the container images."""
