# Container images and Kubernetes manifests (included by the Makefile: -include mk/*.mk).
#   make images        build the images of src/ser/ops/images.py with Docker when its daemon
#                      answers, else with buildah (no daemon: vfs storage, chroot isolation)
#   make images-check  build the CPU and serving images with buildah on a base made from
#                      Debian's packages, then run them: `ser --version/--help`, a pipeline
#                      component as KFP's launcher calls it, TorchServe answering /ping
#                      (needs root, buildah and debootstrap: apt-get install -y buildah debootstrap;
#                      one command, ~40 min on 2 cores when the torch layer is cached, ~25 GB of vfs)
#   make push-images   docker push of the same tags (after `docker login REGISTRY`)
#   make manifests     kubectl kustomize of every overlay into build/manifests/OVERLAY.yaml
#
# Variables: IMAGE_BUILDER (docker|buildah, default: detected), PYTHON_IMAGE (base image;
# images-check default: the Debian-made localhost/ser-python:3.11-bookworm),
# TORCH_FIND_LINKS (a folder holding the torch wheel, mounted into buildah builds),
# TORCH_INDEX_URL (index for torch when TORCH_FIND_LINKS is set; default PyPI, since the
# local +cpu wheel outranks PyPI's plain build), CA_BUNDLE (host CA file for the build's
# HTTPS behind an intercepting proxy), IMAGES (names to build, default all).

DOCKER        ?= docker
KUBECTL       ?= kubectl
# Runs src/ser/ops/images.py as a plain script: the build path needs only python3, not the venv.
IMAGES_PY     ?= python3 src/ser/ops/images.py
OVERLAYS      ?= $(notdir $(wildcard manifests/overlays/*))
MANIFESTS_DIR ?= build/manifests
IMAGE_BUILDER ?=
PYTHON_IMAGE  ?=
DEBIAN_BASE   ?= localhost/ser-python:3.11-bookworm
TORCH_FIND_LINKS ?=
CA_BUNDLE     ?=
IMAGES        ?=
IMAGES_CHECK_PORT ?= 18480
# images-check builds on this machine, so it takes what this machine's pip uses when
# TORCH_FIND_LINKS / CA_BUNDLE are not given: the first $PIP_FIND_LINKS folder holding
# a torch CPU wheel (no download of torch, and none where download.pytorch.org is out of
# reach), and the CA file of $PIP_CERT or $SSL_CERT_FILE (a TLS-intercepting proxy's CA,
# mounted for RUN steps only). Set LOCAL_TORCH_WHEELS= or HOST_CA_BUNDLE= to opt out.
LOCAL_TORCH_WHEELS ?= $(firstword $(foreach d,$(PIP_FIND_LINKS),$(if $(wildcard $(d)/torch-*+cpu-cp311-*.whl),$(d))))
HOST_CA_BUNDLE     ?= $(firstword $(wildcard $(PIP_CERT) $(SSL_CERT_FILE)))


BUILD_OPTS = $(if $(IMAGE_BUILDER),--builder $(IMAGE_BUILDER)) $(if $(PYTHON_IMAGE),--python-image $(PYTHON_IMAGE)) \
  $(if $(TORCH_FIND_LINKS),--torch-find-links $(TORCH_FIND_LINKS) --torch-index-url https://pypi.org/simple) \
  $(if $(CA_BUNDLE),--ca-bundle $(CA_BUNDLE)) --report build/images/report.json

.PHONY: images images-base images-check push-images manifests

images:  ## build the images (Docker if its daemon answers, else buildah); times and sizes in build/images/report.json
	$(IMAGES_PY) build $(IMAGES) $(BUILD_OPTS)

images-base:  ## make the Python 3.11 base image from Debian's packages (buildah + debootstrap, root)
	@command -v buildah >/dev/null && buildah --storage-driver vfs inspect --type image $(DEBIAN_BASE) >/dev/null 2>&1 \
	  || images/base-debian.sh $(DEBIAN_BASE)

images-check: PYTHON_IMAGE := $(or $(PYTHON_IMAGE),$(DEBIAN_BASE))
images-check: IMAGE_BUILDER := buildah
images-check: TORCH_FIND_LINKS := $(or $(TORCH_FIND_LINKS),$(LOCAL_TORCH_WHEELS))
images-check: CA_BUNDLE := $(or $(CA_BUNDLE),$(HOST_CA_BUNDLE))
images-check: setup  ## build the CPU + serving images with buildah and run them (CLI, a KFP step, TorchServe)
	@command -v buildah >/dev/null || { echo "make images-check needs buildah, which builds and runs images without a daemon" \
	  "(Debian/Ubuntu: apt-get install -y buildah debootstrap; run as root)"; exit 3; }
	@[ "$(PYTHON_IMAGE)" != "$(DEBIAN_BASE)" ] || $(MAKE) --no-print-directory images-base
	$(IMAGES_PY) build cpu serve $(BUILD_OPTS)
	$(VENV)/bin/ser pipeline compile --out build/pipelines
	$(PY) src/ser/ops/images.py check build/pipelines/ser_study.yaml $(IMAGES_CHECK_PORT)

push-images:  ## docker push the image tags of src/ser/ops/images.py
	@for name in cpu gpu-v100 serve serve-gpu-v100; do \
	  tag=$$($(IMAGES_PY) $$name) && echo "$(DOCKER) push $$tag" && $(DOCKER) push $$tag || exit 1; \
	done

manifests:  ## kubectl kustomize each overlay into build/manifests/OVERLAY.yaml (offline)
	@mkdir -p $(MANIFESTS_DIR)
	@for o in $(OVERLAYS); do \
	  $(KUBECTL) kustomize manifests/overlays/$$o > $(MANIFESTS_DIR)/$$o.yaml || exit 1; \
	  echo "wrote $(MANIFESTS_DIR)/$$o.yaml"; \
	done
