"""Texts that exercise incremental detokenization: multi-byte characters, spaces a tokenizer cleans up, code."""

SAMPLE_TEXTS = [
    "你好，世界！今天天气很好。",
    "emoji 🙂 😀 🚀 🎉 👍🏽 ❤️ 🧪",
    "東京は日本の首都です。",
    "café naïve façade über — “quotes”",
    "Isn't it ? I 'm here . Don't , you 're ok ! we 've",
    "def main():\n    return {'a': 1}\n",
    "a b c d . e",
    "안녕하세요 Привет Ελληνικά ∑ ∫ √ ∞",
]
