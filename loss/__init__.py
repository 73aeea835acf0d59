from loss.loss import motion_vertex_loss

__all__ = ["motion_vertex_loss"]
