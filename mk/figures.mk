# Figures (`make figures`), the browsable report (`make report`), the claims ledger (`make claims`) and the
# README's images and claims block (`make readme-figures`, `make claims-readme`). Included by the Makefile,
# which defines PY, OUTPUTS, SMOKE, DATA and the reproduce-* sweeps that the figures read.
.PHONY: figures figure-maps figure-plots report readme-figures claims claims-readme

FIGURES_DIR := $(OUTPUTS)/figures
ifeq ($(SMOKE),1)
# SMOKE: a 12-block tiny random ViT on the SMOKE sweeps' ShapeBench images, ground-truth masks outlined
MAPS_ARGS := --smoke --logger none
PLOT_ARGS := --logger none
else
# DeiT-B (timm's weights; ARGS_MAPS="model.checkpoint=/path/deit_base.pth") on ImageNet val (DATA=/datasets)
MAPS_ARGS := --model deit_b $(if $(DATA),--data $(DATA)/imagenet) $(ARGS_MAPS)
PLOT_ARGS :=
endif
# Figure 1 and Fig. 3's UMT panel come with the video suite (mk/video.mk), Figure 7 with the ResNet one
# (mk/resnet.mk), when those are present; figure-plots copies their PNGs here beside a PDF.
VIDEO_FIGURES := $(wildcard mk/video.mk)
RESNET_FIGURES := $(wildcard mk/resnet.mk)
ifeq ($(SMOKE),1)
# `make figures SMOKE=1` checks the figure pipeline, not the paper: 7-10 minutes on 2 CPU cores (the sweeps' own
# SMOKE grids take ~28). Each sweep is cut to what keeps every panel and every series of its figure, the image
# sweeps on 4 images (dataset.limit=4), so a line of Figs. 3 / 5 has two points instead of five:
#   Fig. 3 and 5: blocks 0 and 8, every score, operation x distance and control;
#   readings: the L2 scores (attn / mlp / block) x 3 readings x DeiT-T/S/B at the DeiT schedule (3 of the
#     9 scores on that panel's axis), and the Table 8 check (DeiT-S, 3 readings x top / bottom) at blocks 0 and 8;
#   Fig. 1: MSRVTT alone (every UMT model x variant; the mean R@1 is over the benchmarks present);
#   Fig. 3 UMT, Fig. 7 and the maps: as their own SMOKE targets run them.
SMOKE_FIGURE_BLOCKS := 'compress.layers=[0],[8]'
FIG3_SWEEP_ARGS := ARGS="$(ARGS) dataset.limit=4 $(SMOKE_FIGURE_BLOCKS)"
FIG5_SWEEP_ARGS := ARGS="$(ARGS) dataset.limit=4 $(SMOKE_FIGURE_BLOCKS)"
READINGS_SWEEP_ARGS := ARGS="$(ARGS) dataset.limit=4 metric=l2" READINGS_TABLE8_ARGS="$(SMOKE_FIGURE_BLOCKS)"
FIG1_SWEEP_ARGS := ARGS="$(ARGS) dataset=msrvtt"
endif

figures: install  ## every figure as PNG + PDF in outputs/figures: the sweeps they read, then maps and plots [SMOKE=1: ~10 min]
	$(MAKE) --no-print-directory reproduce-fig3 $(FIG3_SWEEP_ARGS)
	$(MAKE) --no-print-directory reproduce-fig5 $(FIG5_SWEEP_ARGS)
	$(MAKE) --no-print-directory reproduce-readings $(READINGS_SWEEP_ARGS)
	$(if $(VIDEO_FIGURES),$(MAKE) --no-print-directory reproduce-fig1 $(FIG1_SWEEP_ARGS))
	$(if $(VIDEO_FIGURES),$(MAKE) --no-print-directory reproduce-fig3-umt)
	$(if $(RESNET_FIGURES),$(MAKE) --no-print-directory reproduce-fig7)
	$(MAKE) --no-print-directory figure-maps figure-plots

figure-maps: install  ## Figs. 4 / 6: class attention vs representation-shift maps (DeiT-B on ImageNet val, DATA=...) [SMOKE=1]
	$(PY) -m repshift.report maps $(MAPS_ARGS) --out $(FIGURES_DIR)

figure-plots: install  ## Figs. 3 / 5 and the readings, from the results already in outputs/ (no sweep) [SMOKE=1]
	$(PY) -m repshift.report figures --results $(OUTPUTS) --out $(FIGURES_DIR) $(PLOT_ARGS)

report: install  ## one self-contained page: the claims ledger, every table that has results, every figure: outputs/report/index.html [SMOKE=1]
	$(PY) -m repshift.report html --results $(OUTPUTS) --figures $(FIGURES_DIR) --out $(OUTPUTS)/report

# The ledger reads every run record under $(OUTPUTS), recursively: outputs/ holds the SMOKE results (outputs/smoke),
# the demo's (outputs/demo/runs) and the real-weights tier's numbers (outputs/realweights/realweights.json).
claims: install  ## the claims ledger: each headline claim of the paper, our measurement, a verdict; writes outputs/claims/ [SMOKE=1]
	$(PY) -m repshift.report claims --results $(OUTPUTS)

claims-readme: install  ## regenerate the README's claims block (and docs/claims.json) from the ledger of outputs/
	$(PY) -m repshift.report claims --results $(OUTPUTS) --readme README.md

# The README's two images, from the tiny ViT the demo ships (trained here on ShapeBench, real weights):
# its maps at early / middle / late blocks (0, 3, 6 of 8, as the demo's figure) and Fig. 3 on ShapeBench.
README_RUNS := outputs/readme
README_MODEL := model=vit_shapebench model.checkpoint=$(CURDIR)/repshift/assets/vit_shapebench.pth
readme-figures: install  ## regenerate docs/img/ (README images) from the shipped ShapeBench ViT (~5 CPU minutes, + ShapeBench on first use)
	$(PY) -m repshift.run -m experiment=fig3 $(README_MODEL) dataset=synthetic dataset.root=$(CURDIR)/data/shapebench \
		'compress.layers=[0],[2],[4],[6]' dataset.limit=400 logger=none progress=false paths.output_dir=$(CURDIR)/$(README_RUNS)
	$(PY) -m repshift.run experiment=fig3 method=base $(README_MODEL) dataset=synthetic \
		dataset.root=$(CURDIR)/data/shapebench dataset.limit=400 logger=none progress=false paths.output_dir=$(CURDIR)/$(README_RUNS)
	$(PY) -m repshift.report figures --results $(README_RUNS) --out $(README_RUNS)/figures --logger none --dpi 80
	$(PY) -m repshift.report maps --model vit_shapebench model.checkpoint=$(CURDIR)/repshift/assets/vit_shapebench.pth \
		--dataset shapebench --data data/shapebench --images 2 --blocks 0,3,6 --figures fig6 \
		--out $(README_RUNS)/figures --logger none --dpi 75
	@mkdir -p docs/img
	@# 256-colour PNGs keep each image well under 200 KB in the repository
	$(PY) -c "import sys; from PIL import Image; [Image.open(s).convert('RGB').quantize(256).save(d, optimize=True) \
		for s, d in zip(sys.argv[1::2], sys.argv[2::2])]" $(README_RUNS)/figures/fig6.png docs/img/shapebench_maps.png \
		$(README_RUNS)/figures/fig3.png docs/img/shapebench_fig3.png
	@ls -l docs/img/shapebench_maps.png docs/img/shapebench_fig3.png
