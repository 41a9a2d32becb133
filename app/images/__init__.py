"""Images: the base image, clients' dependency images, their wheels and the cache that bounds them."""
