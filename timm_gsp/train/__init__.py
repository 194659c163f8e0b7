"""What a training run needs beyond the model (a tool: loaded when used, never by the core).

* ``checkpoint``: atomic, recoverable safetensors training checkpoints;
* ``run_results``: ``results.json``, what a run measured and how;
* ``distributed``: the one distributed start (torchrun; gloo on CPU, nccl on GPUs) and each process's device;
* ``folder_claim``: ``FolderClaim``, one run per output folder.
"""
