# Vision Mamba (Table 7). Included by the Makefile, which defines PY, RUN_ARGS and `report`.
.PHONY: reproduce-table7

reproduce-table7: install  ## Table 7: ViM-T Base vs ToP-ViM vs Ours (+ static control) on ImageNet-1k
	$(PY) -m repshift.run -m experiment=table7 $(RUN_ARGS)
	$(call report,table7)
