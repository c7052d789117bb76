"""The method as pure torch (book: Method): networks, perceptual distance, adversarial losses, weight rule."""
