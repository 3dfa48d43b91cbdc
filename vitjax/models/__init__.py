from vitjax.models.vit import PretrainedCfg, VisionTransformer, model_config

__all__ = ['PretrainedCfg', 'VisionTransformer', 'model_config']
