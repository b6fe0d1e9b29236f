# Figures (`make figures`), the browsable report (`make report`) and the README's images
# (`make readme-figures`). Included by the Makefile, which defines PY, OUTPUTS, SMOKE, DATA and the
# reproduce-* sweeps that the figures read.
.PHONY: figures figure-maps figure-plots report readme-figures

FIGURES_DIR := $(OUTPUTS)/figures
ifeq ($(SMOKE),1)
# SMOKE: a 12-block tiny random ViT on the SMOKE sweeps' ShapeBench images, ground-truth masks outlined
MAPS_ARGS := smoke=true logger=none
PLOT_ARGS := logger=none
else
# DeiT-B (timm's weights; ARGS_MAPS="model.checkpoint=/path/deit_base.pth") on ImageNet val (DATA=/datasets)
MAPS_ARGS := model=deit_b $(if $(DATA),data=$(DATA)/imagenet) $(ARGS_MAPS)
PLOT_ARGS :=
endif
# Figure 1 and Fig. 3's UMT panel come with the video suite (mk/video.mk), Figure 7 with the ResNet one
# (mk/resnet.mk), when those are present; figure-plots copies their PNGs here beside a PDF.
FIGURE_SWEEPS := reproduce-fig3 reproduce-fig5 reproduce-readings \
	$(if $(wildcard mk/video.mk),reproduce-fig1 reproduce-fig3-umt) $(if $(wildcard mk/resnet.mk),reproduce-fig7)

figures: install  ## every figure as PNG + PDF in outputs/figures: the sweeps they read, then maps and plots [SMOKE=1]
	$(MAKE) --no-print-directory $(FIGURE_SWEEPS)
	$(MAKE) --no-print-directory figure-maps figure-plots

figure-maps: install  ## Figs. 4 / 6: class attention vs representation-shift maps (DeiT-B on ImageNet val, DATA=...) [SMOKE=1]
	$(PY) -m repshift.report maps $(MAPS_ARGS) out=$(FIGURES_DIR)

figure-plots: install  ## Figs. 3 / 5 and the readings, from the results already in outputs/ (no sweep) [SMOKE=1]
	$(PY) -m repshift.report figures results=$(OUTPUTS) out=$(FIGURES_DIR) $(PLOT_ARGS)

report: install  ## one self-contained page with every table that has results and every figure: outputs/report/index.html [SMOKE=1]
	$(PY) -m repshift.report html results=$(OUTPUTS) figures=$(FIGURES_DIR) out=$(OUTPUTS)/report

# The README's two images, from the tiny ViT the demo ships (trained here on ShapeBench, real weights):
# its maps at early / middle / late blocks (0, 3, 6 of 8, as the demo's figure) and Fig. 3 on ShapeBench.
README_RUNS := outputs/readme
README_MODEL := model=vit_shapebench model.checkpoint=$(CURDIR)/repshift/assets/vit_shapebench.pth
readme-figures: install  ## regenerate docs/img/ (README images) from the shipped ShapeBench ViT (~5 CPU minutes, + ShapeBench on first use)
	$(PY) -m repshift.run -m experiment=fig3 $(README_MODEL) dataset=synthetic dataset.root=$(CURDIR)/data/shapebench \
		'compress.layers=[0],[2],[4],[6]' dataset.limit=400 logger=none progress=false paths.output_dir=$(CURDIR)/$(README_RUNS)
	$(PY) -m repshift.run experiment=fig3 method=base $(README_MODEL) dataset=synthetic \
		dataset.root=$(CURDIR)/data/shapebench dataset.limit=400 logger=none progress=false paths.output_dir=$(CURDIR)/$(README_RUNS)
	$(PY) -m repshift.report figures results=$(README_RUNS) out=$(README_RUNS)/figures logger=none dpi=80
	$(PY) -m repshift.report maps $(README_MODEL) dataset=shapebench data=data/shapebench images=2 'blocks=[0,3,6]' \
		'figures=[fig6]' out=$(README_RUNS)/figures logger=none dpi=75
	@mkdir -p docs/img
	@# 256-colour PNGs keep each image well under 200 KB in the repository
	$(PY) -c "import sys; from PIL import Image; [Image.open(s).convert('RGB').quantize(256).save(d, optimize=True) \
		for s, d in zip(sys.argv[1::2], sys.argv[2::2])]" $(README_RUNS)/figures/fig6.png docs/img/shapebench_maps.png \
		$(README_RUNS)/figures/fig3.png docs/img/shapebench_fig3.png
	@ls -l docs/img/shapebench_maps.png docs/img/shapebench_fig3.png
