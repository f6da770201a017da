"""Language models: a GPT-2 or Llama trained and its Hessian spectrum measured at each checkpoint.

The run reads top to bottom in `run` (built by `build`, trained by `driver`, measured by `spectrum`, tracked by
`track`); `presets` holds the configurations, `weights` and `safetensors_io` the pre-trained weights (local HF
safetensors), `tokenizers` characters, GPT-2 byte-level BPE and SentencePiece. The models live in train.models
(`gpt2`, `llama`, `lora`).
"""
