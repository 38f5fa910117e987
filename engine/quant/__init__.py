"""Weight-only quantization (int8 per channel, int4 per group), 2:4 sparsity and TEAL activation sparsity.

`formats` holds the canonical layouts, `quantize` the quantizers, `linear.QuantLinear` the CPU reference
matmul (CUDA: ``engine.quant.gpu``), `policy` the per-layer configuration, `loaders` GPTQ/AWQ/GGUF readers.
"""
