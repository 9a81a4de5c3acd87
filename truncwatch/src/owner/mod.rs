//! Who owns a connection, from node-local files: its process's cgroup, container and pod
//! (`attribution`), the build it runs (`build_identity`) and its container's image
//! (`container_image`).
pub mod attribution;
pub mod build_identity;
pub mod container_image;
