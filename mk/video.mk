# Video targets (UMT), included by the main Makefile: Tables 2 (retrieval), 3 (vid-TLDR merging) and
# 4 (video QA), Fig. 1, and the UMT parts of Table 1 and Fig. 3. Same knobs as the image targets: DATA= (holds umt/ and one folder per benchmark,
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
	$(if $(filter 1,$(DETACH)),@echo "queued: when every run is done: $(PY) -m repshift.report fig1 --results $(OUTPUTS)",$(PY) -m repshift.report fig1 --results $(OUTPUTS))

reproduce-table1-umt: install  ## Table 1, UMT-B column: FlashAttention vs self-attention on MSRVTT
	$(PY) -m repshift.run -m experiment=table1_umt $(VIDEO_RUN_ARGS)
	$(call report,table1)

reproduce-fig3-umt: install  ## Figure 3, UMT-B: attention score vs representation shift, 1,100 tokens at one block
	$(PY) -m repshift.run -m experiment=fig3_umt $(FIG3_UMT_ARGS) $(VIDEO_RUN_ARGS)
	$(PY) -m repshift.run -m experiment=fig3_umt 'compress.layers=[]' metric=l2 $(VIDEO_RUN_ARGS)
	$(call report,fig3_umt)

# Table 3 (vid-TLDR merging, issue 11). SMOKE clips have 4 frames (784 tokens): vid-TLDR's schedules, written for
# 12 frames (2,352 tokens), are scaled by 1/3 (repshift/configs/compress/vid_tldr.yaml, table "smoke").
TABLE3_ARGS = $(if $(filter 1,$(SMOKE)),++vid_tldr.table=smoke)

.PHONY: reproduce-table3

reproduce-table3: install  ## Table 3: vid-TLDR merging on UMT-B/L, 7 benchmarks, Base / vid-TLDR / +Ours (exact, flash)
	$(PY) -m repshift.run -m experiment=table3 $(TABLE3_ARGS) $(VIDEO_RUN_ARGS)
	$(PY) -m repshift.run -m experiment=table3_bench $(TABLE3_ARGS) $(VIDEO_RUN_ARGS)
	$(PY) -m repshift.run -m experiment=table3_bench_base $(VIDEO_RUN_ARGS)
	$(call report,table3)

# Table 4 (UMT video QA, issue 11): MSRVTT-QA and MSVD-QA, 10 % pruned after blocks 0, 1, 2. SMOKE=1 answers the
# synthetic clips' colour / shape / direction questions with the tiny random UMT QA model.
.PHONY: reproduce-table4

reproduce-table4: install  ## Table 4: UMT-B/L video QA on MSRVTT-QA and MSVD-QA, Base vs Attn vs Ours
	$(PY) -m repshift.run -m experiment=table4 $(VIDEO_RUN_ARGS)
	$(PY) -m repshift.run -m experiment=table4_bench $(VIDEO_RUN_ARGS)
	$(call report,table4)
