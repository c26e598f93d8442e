# Container images and Kubernetes manifests (included by the Makefile: -include mk/*.mk).
#   make images      docker build of the images in src/ser/images.py (needs Docker with
#                    BuildKit, which this project's dev machines and CI do not have;
#                    run it on a workstation or in a CI job with a Docker daemon)
#   make push-images docker push of the same tags (after `docker login REGISTRY`)
#   make manifests   kubectl kustomize of every overlay into build/manifests/OVERLAY.yaml
#                    (offline; `kubectl apply -f` those files, or `kubectl apply -k`)

DOCKER        ?= docker
KUBECTL       ?= kubectl
# Runs src/ser/images.py as a plain script: needs only python3, not the venv.
IMAGES_PY     ?= python3 src/ser/images.py
OVERLAYS      ?= $(notdir $(wildcard manifests/overlays/*))
MANIFESTS_DIR ?= build/manifests

.PHONY: images push-images manifests

images:  ## docker build the CPU, V100 and serving images (needs Docker + BuildKit)
	@command -v $(DOCKER) >/dev/null || { echo "make images needs Docker ($(DOCKER) not found)"; exit 1; }
	@$(IMAGES_PY) | while read -r args; do \
	  echo "$(DOCKER) build $$args ."; \
	  DOCKER_BUILDKIT=1 $(DOCKER) build $$args . || exit 1; \
	done

push-images:  ## docker push the image tags of src/ser/images.py
	@for name in cpu gpu-v100 serve serve-gpu-v100; do \
	  tag=$$($(IMAGES_PY) $$name) && echo "$(DOCKER) push $$tag" && $(DOCKER) push $$tag || exit 1; \
	done

manifests:  ## kubectl kustomize each overlay into build/manifests/OVERLAY.yaml (offline)
	@mkdir -p $(MANIFESTS_DIR)
	@for o in $(OVERLAYS); do \
	  $(KUBECTL) kustomize manifests/overlays/$$o > $(MANIFESTS_DIR)/$$o.yaml || exit 1; \
	  echo "wrote $(MANIFESTS_DIR)/$$o.yaml"; \
	done
