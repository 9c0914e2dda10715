"""llama.cpp's convert_hf_to_gguf.py for the built-in tiny model (for the llama-server side of the tiny-model
comparison). Its byte-level BPE (GPT-2 split, ByteLevel use_regex) is not in llama.cpp's list of known
pre-tokenizer hashes, so it is named "gpt-2", the same split. Run from llama.cpp's source directory:

    PYTHONPATH=gguf-py python /path/to/scripts/convert_tiny_gguf.py /path/to/seedance/models/tiny \
        --outtype f32 --outfile seedance-tiny-f32.gguf
"""

import runpy
import sys

sys.path.insert(0, ".")
import conversion.base as base  # llama.cpp's, from the current directory

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[1:]]
runpy.run_path("convert_hf_to_gguf.py", run_name="__main__")
