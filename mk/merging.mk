# The merging table (issue 23, docs/merging.md): pruning by representation shift vs ToMe merging vs ToMe +
# representation shift at matched GMACs, with the Attn, static and random controls. Included by the main
# Makefile, whose knobs it shares: DATA adds DeiT-T/S/B on ImageNet val (timm weights from the cache),
# SMOKE=1 runs the same sweep on a random-weight tiny ViT and a few images, ARGS reaches every run.

ifeq ($(SMOKE),1)
MERGING_ARGS := smoke=on $(ARGS)
MERGING_SHAPEBENCH := model.checkpoint=null
else
MERGING_ARGS := $(ARGS)
MERGING_SHAPEBENCH := model.checkpoint=$(CURDIR)/repshift/assets/vit_shapebench.pth
endif
MERGING_DEIT := deit_t deit_s deit_b

.PHONY: reproduce-merging

reproduce-merging: install  ## prune by shift vs ToMe vs ToMe + shift at matched GMACs (ShapeBench tiny ViT; DeiT-T/S/B with DATA=)
	$(PY) -m repshift.merging_experiment --no-table $(MERGING_SHAPEBENCH) $(MERGING_ARGS)
	$(if $(DATA),for model in $(MERGING_DEIT); do \
		$(PY) -m repshift.merging_experiment --no-table model=$$model dataset=imagenet paths.data_dir=$(DATA) $(MERGING_ARGS) || exit 1; \
	done)
	$(PY) -m repshift.merging_experiment --table-only $(MERGING_ARGS)
