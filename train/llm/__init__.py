"""Language-model support: pre-trained weights from local HF safetensors (`weights`) and tokenizers
(`tokenizers`: characters, GPT-2 byte-level BPE, SentencePiece). The models live in train.models
(`gpt2`, `llama`, `lora`)."""
