#!/usr/bin/env bash
# Builds llama.cpp (CPU and Vulkan backends in one build) from the llama-cpp-python sdist, outside
# the repository, for scripts/compare-llama-cpp.py and the LoRA check in tests. Not part of CI:
# about 25 minutes on 2 cores.
#
#   scripts/build-llama-cpp.sh            # builds into ${LLAMA_CPP_DIR:-~/.cache/quill/llama.cpp}
#   NO_VULKAN=1 scripts/build-llama-cpp.sh  # CPU backend only
#
# Prints the directory holding llama-bench, llama-simple, llama-cli and llama-completion (the LoRA check) on its last line.
# Needs cmake, a C++ compiler, pip, and for Vulkan Debian's glslc libvulkan-dev spirv-headers
# glslang-tools.
set -euo pipefail
version=0.3.36
dir="${LLAMA_CPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/quill/llama.cpp}"
mkdir -p "$dir"
src="$dir/llama_cpp_python-$version/vendor/llama.cpp"
if [ ! -d "$src" ]; then
  echo "== fetching the llama-cpp-python $version sdist" >&2
  pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$dir" >&2
  tar -xzf "$dir/llama_cpp_python-$version.tar.gz" -C "$dir"
fi

vulkan=ON
[ -n "${NO_VULKAN:-}" ] && vulkan=OFF
if [ "$vulkan" = ON ] && ! grep -q VK_EXT_layer_settings /usr/include/vulkan/vulkan_core.h 2>/dev/null; then
  # Vulkan headers older than 1.3.261 (Debian bookworm has 1.3.239) lack VK_EXT_layer_settings,
  # which ggml-vulkan uses only to turn on the validation layer's best-practice checks. Build
  # without that (the validation layer is not used for benchmarking).
  python3 - "$src/ggml/src/ggml-vulkan/ggml-vulkan.cpp" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
if "QUILL_NO_LAYER_SETTINGS" not in text:
    start = text.index("    VkBool32 enable_best_practice = layer_settings;")
    end = text.index("vk::InstanceCreateInfo instance_create_info(", start)
    end = text.index("\n", end) + 1
    replacement = ("    // QUILL_NO_LAYER_SETTINGS: these Vulkan headers lack VK_EXT_layer_settings.\n"
                   "    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, &app_info, layers, extensions);\n")
    text = text[:start] + replacement + text[end:]
    text = text.replace('extensions.push_back("VK_EXT_layer_settings");', '(void)0;')
    open(path, "w").write(text)
EOF
fi

build="$dir/build"
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  -DGGML_VULKAN="$vulkan" >&2
cmake --build "$build" -j"${JOBS:-2}" --target llama-bench llama-simple llama-cli llama-completion >&2
echo "$build/bin"
