# ResNet targets (Table 6, Fig. 7); included by the main Makefile, whose knobs (SMOKE, DATA, LAUNCHER,
# ARGS, DETACH) they share. SMOKE=1 fine-tunes for one epoch of a few ShapeBench images.

ifeq ($(SMOKE),1)
TABLE6_ARGS := train.epochs=1 train.cooldown_epochs=0 train.warmup_epochs=0 train.batch_size=4
FIG7_ARGS   := --random-weights
else
TABLE6_ARGS :=
FIG7_ARGS   := $(if $(IMAGE),--image $(IMAGE))
endif

.PHONY: reproduce-table6 reproduce-fig7

reproduce-table6: install  ## Table 6: ResNet-34/50 Base vs line-wise vs token-wise pruning, fine-tuned (ImageNet-1k train+val)
	$(PY) -m repshift.run -m experiment=table6 $(TABLE6_ARGS) $(RUN_ARGS)
	$(call report,table6)

reproduce-fig7: install  ## Figure 7: representation-shift map of each ResNet-50 stage over an image (IMAGE=path; default ShapeBench)
	$(PY) -m repshift.maps fig7 --out $(OUTPUTS)/fig7 $(FIG7_ARGS)
