# Video targets (UMT, issue 10), included by the main Makefile: Table 2, Fig. 1, and the UMT parts of
# Table 1 and Fig. 3. Same knobs as the image targets: DATA= (holds umt/ and one folder per benchmark,
# docs/video.md), LAUNCHER=basic|submitit_local|slurm, SMOKE=1 (tiny random UMT on synthetic clips,
# outputs/smoke), DETACH=1, ARGS=.
#   make reproduce-table2 DATA=/datasets LAUNCHER=slurm

# smoke=video instead of smoke=on: shrinks the UMT configs and points every benchmark at the synthetic clips.
VIDEO_RUN_ARGS = $(subst smoke=on,smoke=video,$(RUN_ARGS))

# SMOKE clips have 4 frames (784 tokens): Fig. 3's 1,100 of 2,352 tokens becomes the same 47 %, 367.
FIG3_UMT_ARGS = $(if $(filter 1,$(SMOKE)),compress.num=367)

.PHONY: reproduce-table2 reproduce-fig1 reproduce-table1-umt reproduce-fig3-umt

reproduce-table2: install  ## Table 2: UMT-B/L video-text retrieval, 7 benchmarks, Base vs Attn vs Ours
	$(PY) -m repshift.run -m experiment=table2 $(VIDEO_RUN_ARGS)
	$(PY) -m repshift.run -m experiment=table2_bench $(VIDEO_RUN_ARGS)
	$(call report,table2)

reproduce-fig1: install  ## Figure 1: mean R@1 vs throughput, UMT-B/L, Base / Attn / Ours / Ours+FA (PNG)
	$(PY) -m repshift.run -m experiment=table2 $(VIDEO_RUN_ARGS)
	$(PY) -m repshift.run -m experiment=fig1 $(VIDEO_RUN_ARGS)
	$(if $(filter 1,$(DETACH)),@echo "queued: when every run is done: $(PY) -m repshift.report.fig1 results=$(OUTPUTS)",$(PY) -m repshift.report.fig1 results=$(OUTPUTS))

reproduce-table1-umt: install  ## Table 1, UMT-B column: FlashAttention vs self-attention on MSRVTT
	$(PY) -m repshift.run -m experiment=table1_umt $(VIDEO_RUN_ARGS)
	$(call report,table1)

reproduce-fig3-umt: install  ## Figure 3, UMT-B: attention score vs representation shift, 1,100 tokens at one block
	$(PY) -m repshift.run -m experiment=fig3_umt $(FIG3_UMT_ARGS) $(VIDEO_RUN_ARGS)
	$(PY) -m repshift.run -m experiment=fig3_umt 'compress.layers=[]' $(VIDEO_RUN_ARGS)
	$(call report,fig3_umt)
