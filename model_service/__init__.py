"""model_service"""
