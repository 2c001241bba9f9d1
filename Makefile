# The README's commands. Every target sets itself up from nothing on a fresh machine.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-mmpose demo test test-slow lint tiny-backbone tiny-models readme-table benchmark benchmark-gpu

# torch first, pinned to the local CPU build, so that no other requirement pulls a multi-GB CUDA build.
# torchvision is deliberately absent: the only wheels are CUDA builds that fail to import next to CPU torch.
install:
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	# controlnet_aux is the reference renderer for the OpenPose parity test; --no-deps keeps torchvision/timm out.
	$(PIP) install -q --no-deps controlnet_aux==0.0.10
	$(MAKE) --no-print-directory install-mmpose

# mmpose 1.3.2 cannot be pip-installed normally (chumpy does not build; full mmcv has no wheels for this torch).
# mmpose.codecs and the CocoMetric semantics are all we compare against; they need only these pure-Python parts.
install-mmpose:
	$(PIP) install -q --no-deps mmpose==1.3.2
	# mmengine depends on opencv-python, which shares the cv2 module with the headless build: keep both below 5.
	$(PIP) install -q "mmengine>=0.10,<1" "mmcv-lite==2.1.0" json_tricks munkres six matplotlib "opencv-python>=4.8,<5"

demo: install
	$(PYTHON) tools/demo.py

# Lint first (line length 110 included): a style error fails the suite as a test would.
test: install
	$(MAKE) --no-print-directory lint
	$(PYTHON) -m pytest -q

# On the CPU kernels the committed backbone recorded: the bit-for-bit rebuild tests compare bytes.
test-slow: install
	env $$($(PYTHON) -m zoo.utils.platform checkpoints/tiny/backbone) $(PYTHON) -m pytest -q -m slow

lint:
	$(PYTHON) -m ruff check zoo tools tests

# Rebuild the tiny backbone under checkpoints/tiny/backbone bit-for-bit (see its recipe.json): the VAE, then
# the text encoder and UNet as text-to-image (configs/tiny/backbone_t2i.yaml), then its measurements and
# docs/tiny_sd_samples.png. One thread: the bytes depend on the order of CPU reductions (about 80 minutes);
# and on the CPU kernels: the tool restarts itself on those the committed recipe.json records.
tiny-backbone: install
	OMP_NUM_THREADS=1 $(PYTHON) tools/build_tiny_backbone.py --out checkpoints/tiny/backbone

# Retrain every tiny model the registry ships (tens of minutes each on 2 CPU cores, one thread, one at a time)
# and refresh the README table.
tiny-models: install
	OMP_NUM_THREADS=1 $(PYTHON) tools/train_tiny.py --all
	$(MAKE) --no-print-directory readme-table

readme-table:
	$(PYTHON) tools/model_zoo_table.py --write README.md

benchmark: install
	$(PYTHON) tools/benchmark.py all

# The prepared GPU run (SD2-base size, random weights, within 5 minutes on one GPU); the table goes to
# outputs/benchmark_gpu.md. No `install` prerequisite: that pins the CPU build of torch; it needs the machine's CUDA
# torch with diffusers and transformers, and no network.
benchmark-gpu:
	$(PYTHON) tools/benchmark.py gpu --out outputs/benchmark_gpu.md
