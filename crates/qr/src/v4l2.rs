//! A V4L2 camera (`/dev/videoN`) as a [`FrameSource`], spoken to by ioctl
//! through `libc` (feature `v4l2`; pure Rust, no system packages: the `v4l`
//! crate's default build runs bindgen and needs libclang).
//!
//! The camera is asked for 8-bit grey (`GREY`) or, failing that, packed
//! 4:2:2 (`YUYV`, what nearly every USB camera offers) at the size given;
//! frames come through four memory-mapped buffers and leave as luma
//! [`GreyImage`]s through the same conversion as a raw pipe
//! ([`luma_from_packed`]). Waiting for a frame is bounded (a camera that
//! stops sending is an error, not a hang). Only the ioctl numbers, struct
//! layouts and error paths can be tested without a camera; they are.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use super::source::{FrameSource, PixelFormat, luma_from_packed};
use super::{GreyImage, MAX_DIMENSION, MAX_PIXELS, QrError};

/// `struct v4l2_capability` (linux/videodev2.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct Capability {
    driver: [u8; 16],
    card: [u8; 32],
    bus_info: [u8; 32],
    version: u32,
    capabilities: u32,
    device_caps: u32,
    reserved: [u32; 3],
}

/// `struct v4l2_pix_format`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PixFormat {
    width: u32,
    height: u32,
    pixelformat: u32,
    field: u32,
    bytesperline: u32,
    sizeimage: u32,
    colorspace: u32,
    private: u32,
    flags: u32,
    ycbcr_enc: u32,
    quantization: u32,
    xfer_func: u32,
}

/// `struct v4l2_format` for single-planar capture: the type, then a
/// 200-byte union aligned to 8 (it holds pointers in other variants).
#[repr(C)]
#[derive(Clone, Copy)]
struct Format {
    kind: u32,
    pad: u32,
    pix: PixFormat,
    rest: [u8; 200 - std::mem::size_of::<PixFormat>()],
}

/// `struct v4l2_requestbuffers`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RequestBuffers {
    count: u32,
    kind: u32,
    memory: u32,
    capabilities: u32,
    flags_and_reserved: u32,
}

/// `struct v4l2_buffer` on a 64-bit system (timeval of two 64-bit words).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Buffer {
    index: u32,
    kind: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    pad: u32,
    timestamp: [i64; 2],
    timecode: [u32; 4],
    sequence: u32,
    memory: u32,
    offset: u64,
    length: u32,
    reserved2: u32,
    request_fd: u32,
    pad2: u32,
}

const _: () = assert!(std::mem::size_of::<Capability>() == 104);
const _: () = assert!(std::mem::size_of::<Format>() == 208);
const _: () = assert!(std::mem::size_of::<RequestBuffers>() == 20);
const _: () = assert!(std::mem::size_of::<Buffer>() == 88);

/// `_IOC(dir, 'V', nr, size)` as the kernel defines it.
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'V' as u32) << 8) | nr
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
const VIDIOC_QUERYCAP: u32 = ioc(IOC_READ, 0, std::mem::size_of::<Capability>());
const VIDIOC_S_FMT: u32 = ioc(IOC_READ | IOC_WRITE, 5, std::mem::size_of::<Format>());
const VIDIOC_REQBUFS: u32 = ioc(
    IOC_READ | IOC_WRITE,
    8,
    std::mem::size_of::<RequestBuffers>(),
);
const VIDIOC_QUERYBUF: u32 = ioc(IOC_READ | IOC_WRITE, 9, std::mem::size_of::<Buffer>());
const VIDIOC_QBUF: u32 = ioc(IOC_READ | IOC_WRITE, 15, std::mem::size_of::<Buffer>());
const VIDIOC_DQBUF: u32 = ioc(IOC_READ | IOC_WRITE, 17, std::mem::size_of::<Buffer>());
const VIDIOC_STREAMON: u32 = ioc(IOC_WRITE, 18, std::mem::size_of::<i32>());
const VIDIOC_STREAMOFF: u32 = ioc(IOC_WRITE, 19, std::mem::size_of::<i32>());

const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
const MEMORY_MMAP: u32 = 1;
const FIELD_NONE: u32 = 1;
const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
const CAP_STREAMING: u32 = 0x0400_0000;
const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
const BUFFERS: u32 = 4;

/// A V4L2 four-character code.
const fn fourcc(c: &[u8; 4]) -> u32 {
    (c[0] as u32) | ((c[1] as u32) << 8) | ((c[2] as u32) << 16) | ((c[3] as u32) << 24)
}
const PIX_FMT_GREY: u32 = fourcc(b"GREY");
const PIX_FMT_YUYV: u32 = fourcc(b"YUYV");

/// One memory-mapped camera buffer, unmapped on drop.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// Frames from a V4L2 capture device.
pub struct V4l2Source {
    // Field order: buffers are unmapped before the descriptor is closed.
    buffers: Vec<Mapped>,
    fd: OwnedFd,
    path: String,
    width: usize,
    height: usize,
    stride: usize,
    format: PixelFormat,
    timeout: Duration,
    streaming: bool,
}

/// The last OS error as an [`QrError::Io`] about `what`.
fn os_error(what: String) -> QrError {
    QrError::Io {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// An ioctl on `fd`, retried when a signal interrupts it.
///
/// # Safety
/// `arg` must point to the struct the request `req` expects.
unsafe fn xioctl<T>(fd: &OwnedFd, req: u32, arg: *mut T) -> std::io::Result<()> {
    loop {
        // SAFETY: the caller passes the struct `req` expects; the request
        // type is `c_ulong` on glibc and `c_int` on musl, hence the cast.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
        if r != -1 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl V4l2Source {
    /// Opens a capture device and starts streaming `width`×`height` frames
    /// (the driver may pick the nearest size it has; [`Self::size`] says
    /// which). Errors name the device and the step that failed: a missing
    /// device, one that is not a V4L2 camera, one that offers neither
    /// `GREY` nor `YUYV`.
    pub fn open(path: &Path, width: usize, height: usize) -> Result<Self, QrError> {
        let name = path.display().to_string();
        if width == 0 || height == 0 {
            return Err(QrError::Empty { width, height });
        }
        if width > MAX_DIMENSION || height > MAX_DIMENSION || width * height > MAX_PIXELS {
            return Err(QrError::TooLarge { width, height });
        }
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| QrError::Invalid(format!("device path {name} contains a NUL byte")))?;
        // SAFETY: a valid C string; the descriptor is owned right below.
        let raw = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(os_error(format!("camera {name}")));
        }
        // SAFETY: `raw` is a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // SAFETY: all-zero is a valid value of these plain C structs.
        let mut cap: Capability = unsafe { std::mem::zeroed() };
        // SAFETY: VIDIOC_QUERYCAP takes a v4l2_capability.
        if let Err(e) = unsafe { xioctl(&fd, VIDIOC_QUERYCAP, &mut cap) } {
            return Err(QrError::Invalid(format!(
                "{name} is not a V4L2 device (VIDIOC_QUERYCAP: {e})"
            )));
        }
        let caps = if cap.capabilities & CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        if caps & CAP_VIDEO_CAPTURE == 0 || caps & CAP_STREAMING == 0 {
            return Err(QrError::Invalid(format!(
                "{name} is not a streaming video capture device (capabilities {caps:#x})"
            )));
        }

        let (pix, format) = Self::set_format(&fd, &name, width, height)?;
        let (w, h) = (pix.width as usize, pix.height as usize);
        if w == 0 || h == 0 || w > MAX_DIMENSION || h > MAX_DIMENSION || w * h > MAX_PIXELS {
            return Err(QrError::TooLarge {
                width: w,
                height: h,
            });
        }
        let row = w * format.bytes_per_pixel();
        let stride = (pix.bytesperline as usize).max(row);

        let mut source = Self {
            buffers: Vec::new(),
            fd,
            path: name,
            width: w,
            height: h,
            stride,
            format,
            timeout: Duration::from_secs(2),
            streaming: false,
        };
        source.start()?;
        Ok(source)
    }

    /// Asks for GREY, then YUYV, at the size given; returns what the
    /// driver settled on.
    fn set_format(
        fd: &OwnedFd,
        name: &str,
        width: usize,
        height: usize,
    ) -> Result<(PixFormat, PixelFormat), QrError> {
        let mut offered = Vec::new();
        for (code, format) in [
            (PIX_FMT_GREY, PixelFormat::Y8),
            (PIX_FMT_YUYV, PixelFormat::Yuyv),
        ] {
            // SAFETY: all-zero is a valid v4l2_format.
            let mut fmt: Format = unsafe { std::mem::zeroed() };
            fmt.kind = BUF_TYPE_VIDEO_CAPTURE;
            fmt.pix.width = width as u32;
            fmt.pix.height = height as u32;
            fmt.pix.pixelformat = code;
            fmt.pix.field = FIELD_NONE;
            // SAFETY: VIDIOC_S_FMT takes a v4l2_format.
            match unsafe { xioctl(fd, VIDIOC_S_FMT, &mut fmt) } {
                Ok(()) if fmt.pix.pixelformat == code => return Ok((fmt.pix, format)),
                Ok(()) => offered.push(fmt.pix.pixelformat),
                Err(e) => {
                    return Err(QrError::Io {
                        what: format!("setting the format of {name}"),
                        source: e,
                    });
                }
            }
        }
        let names: Vec<String> = offered
            .iter()
            .map(|c| String::from_utf8_lossy(&c.to_le_bytes()).into_owned())
            .collect();
        Err(QrError::Invalid(format!(
            "{name} offers neither GREY nor YUYV at {width}x{height} (it proposed {names:?})"
        )))
    }

    /// Maps the buffers, queues them and starts streaming.
    fn start(&mut self) -> Result<(), QrError> {
        let mut req = RequestBuffers {
            count: BUFFERS,
            kind: BUF_TYPE_VIDEO_CAPTURE,
            memory: MEMORY_MMAP,
            ..RequestBuffers::default()
        };
        // SAFETY: VIDIOC_REQBUFS takes a v4l2_requestbuffers.
        unsafe { xioctl(&self.fd, VIDIOC_REQBUFS, &mut req) }.map_err(|e| QrError::Io {
            what: format!("requesting memory-mapped buffers from {}", self.path),
            source: e,
        })?;
        if req.count == 0 {
            return Err(QrError::Invalid(format!(
                "{} gave no memory-mapped buffers",
                self.path
            )));
        }
        for index in 0..req.count {
            let mut buf = Buffer {
                index,
                kind: BUF_TYPE_VIDEO_CAPTURE,
                memory: MEMORY_MMAP,
                ..Buffer::default()
            };
            // SAFETY: VIDIOC_QUERYBUF takes a v4l2_buffer.
            unsafe { xioctl(&self.fd, VIDIOC_QUERYBUF, &mut buf) }.map_err(|e| QrError::Io {
                what: format!("querying buffer {index} of {}", self.path),
                source: e,
            })?;
            let len = buf.length as usize;
            // SAFETY: maps the buffer the driver just described; checked below.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.fd.as_raw_fd(),
                    buf.offset as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(os_error(format!("mapping buffer {index} of {}", self.path)));
            }
            self.buffers.push(Mapped { ptr, len });
            // SAFETY: VIDIOC_QBUF takes a v4l2_buffer.
            unsafe { xioctl(&self.fd, VIDIOC_QBUF, &mut buf) }.map_err(|e| QrError::Io {
                what: format!("queueing buffer {index} of {}", self.path),
                source: e,
            })?;
        }
        let mut kind = BUF_TYPE_VIDEO_CAPTURE as libc::c_int;
        // SAFETY: VIDIOC_STREAMON takes an int buffer type.
        unsafe { xioctl(&self.fd, VIDIOC_STREAMON, &mut kind) }.map_err(|e| QrError::Io {
            what: format!("starting the stream of {}", self.path),
            source: e,
        })?;
        self.streaming = true;
        Ok(())
    }

    /// The frame size the driver chose.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// The pixel layout the driver chose.
    pub fn pixel_format(&self) -> PixelFormat {
        self.format
    }

    /// How long [`FrameSource::next_frame`] waits before calling the camera
    /// silent (default 2 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

impl FrameSource for V4l2Source {
    /// The next frame; a camera silent for the timeout is an error (a
    /// camera never simply "ends").
    fn next_frame(&mut self) -> Result<Option<GreyImage>, QrError> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = self.timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        loop {
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r > 0 {
                break;
            }
            if r == 0 {
                return Err(QrError::Io {
                    what: format!("camera {}", self.path),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no frame within {} ms", self.timeout.as_millis()),
                    ),
                });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(QrError::Io {
                    what: format!("waiting for camera {}", self.path),
                    source: e,
                });
            }
        }
        let mut buf = Buffer {
            kind: BUF_TYPE_VIDEO_CAPTURE,
            memory: MEMORY_MMAP,
            ..Buffer::default()
        };
        // SAFETY: VIDIOC_DQBUF takes a v4l2_buffer.
        unsafe { xioctl(&self.fd, VIDIOC_DQBUF, &mut buf) }.map_err(|e| QrError::Io {
            what: format!("taking a frame from {}", self.path),
            source: e,
        })?;
        let frame = match self.buffers.get(buf.index as usize) {
            Some(m) => {
                let used = (buf.bytesused as usize).min(m.len);
                // SAFETY: the driver filled `used` bytes of this mapping and
                // does not write it again until it is queued back below.
                let data = unsafe { std::slice::from_raw_parts(m.ptr as *const u8, used) };
                luma_from_packed(data, self.width, self.height, self.stride, self.format)
            }
            None => Err(QrError::Invalid(format!(
                "{} returned buffer {} of {}",
                self.path,
                buf.index,
                self.buffers.len()
            ))),
        };
        // SAFETY: VIDIOC_QBUF takes a v4l2_buffer (the one just dequeued).
        unsafe { xioctl(&self.fd, VIDIOC_QBUF, &mut buf) }.map_err(|e| QrError::Io {
            what: format!("returning a buffer to {}", self.path),
            source: e,
        })?;
        frame.map(Some)
    }
}

impl Drop for V4l2Source {
    fn drop(&mut self) {
        if self.streaming {
            let mut kind = BUF_TYPE_VIDEO_CAPTURE as libc::c_int;
            // SAFETY: VIDIOC_STREAMOFF takes an int buffer type. Errors are
            // moot: the descriptor is closed next.
            let _ = unsafe { xioctl(&self.fd, VIDIOC_STREAMOFF, &mut kind) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values from linux/videodev2.h on x86_64 and aarch64.
        assert_eq!(VIDIOC_QUERYCAP, 0x8068_5600);
        assert_eq!(VIDIOC_S_FMT, 0xc0d0_5605);
        assert_eq!(VIDIOC_REQBUFS, 0xc014_5608);
        assert_eq!(VIDIOC_QUERYBUF, 0xc058_5609);
        assert_eq!(VIDIOC_QBUF, 0xc058_560f);
        assert_eq!(VIDIOC_DQBUF, 0xc058_5611);
        assert_eq!(VIDIOC_STREAMON, 0x4004_5612);
        assert_eq!(VIDIOC_STREAMOFF, 0x4004_5613);
        assert_eq!(PIX_FMT_YUYV, 0x5659_5559);
        assert_eq!(PIX_FMT_GREY, 0x5945_5247);
    }

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let e = V4l2Source::open(Path::new("/dev/video-sonotap-missing"), 640, 480)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("/dev/video-sonotap-missing"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_camera_is_refused() {
        let e = V4l2Source::open(Path::new("/dev/null"), 640, 480)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("/dev/null is not a V4L2 device"), "{e}");
    }

    #[test]
    fn absurd_sizes_are_refused_before_opening() {
        assert!(matches!(
            V4l2Source::open(Path::new("/dev/null"), 20_000, 20_000),
            Err(QrError::TooLarge { .. })
        ));
        assert!(matches!(
            V4l2Source::open(Path::new("/dev/null"), 0, 480),
            Err(QrError::Empty { .. })
        ));
    }
}
