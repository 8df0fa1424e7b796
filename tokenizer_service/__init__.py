"""tokenizer_service"""
