//! How the device model notifies the driver: the transport's part (2.3 "Notifications").
//!
//! A virtio-pci transport in a KVM VMM writes an irqfd routed to the queue's MSI-X vector; a
//! vhost-user back end writes the queue's call eventfd. The device model only says which
//! notification, and when.

/// The driver-facing notifications of one device.
pub trait Interrupt: Send + Sync + std::fmt::Debug {
    /// A used buffer notification for queue `queue`.
    fn notify_queue(&self, queue: u16);

    /// A configuration change notification (the device raised DEVICE_NEEDS_RESET).
    fn notify_config(&self);
}
