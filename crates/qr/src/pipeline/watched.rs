//! The image rqrr searches, watching the time as rqrr reads it.
//!
//! rqrr cannot be stopped from outside, and its alignment-pattern search
//! has no bound of its own: it spirals out from its guess for as long as a
//! size estimate from the finder patterns' perspective says, and a
//! degenerate perspective makes that estimate huge (quirc, which rqrr
//! ports, has the same loop). A 50×58 frame found by fuzzing kept it busy
//! for over a second, past a gate frame's 25 ms budget forty times over; a
//! crafted one, for minutes. So rqrr gets this image instead of its own
//! buffer (through its `img` feature, which takes any `image` crate
//! image): every read counts, every [`READS_PER_LOOK`] reads look at the
//! clock, and one past the attempt's end unwinds out of rqrr with
//! [`OutOfTime`], which `contained` catches: the attempt reads as no code.

use std::cell::Cell;
use std::panic;
use std::rc::Rc;
use std::time::Instant;

use image::{GenericImage, GenericImageView, GrayImage, Luma};

use crate::contain::OutOfTime;

/// Reads between two looks at the clock: a few microseconds of rqrr's work,
/// so the looks (tens of nanoseconds each) cost it next to nothing and an
/// attempt ends within microseconds of its end. (The count on every read,
/// and the `image` crate's bounds checks, cost more: up to 9 % on the
/// gate's median per frame, side by side, `cargo bench --bench qr`.)
const READS_PER_LOOK: u32 = 4096;

/// A grey image whose reads and writes watch the time.
pub(super) struct Watched {
    image: GrayImage,
    watch: Rc<Watch>,
}

/// The time an attempt may run until, shared by the copies rqrr makes.
struct Watch {
    /// `None`: no end (a budget too large for the clock).
    until: Option<Instant>,
    reads: Cell<u32>,
}

impl Watch {
    /// Counts one read, and every [`READS_PER_LOOK`] looks at the clock.
    fn tick(&self) {
        let reads = self.reads.get().wrapping_add(1);
        self.reads.set(reads);
        if reads.is_multiple_of(READS_PER_LOOK) {
            self.look();
        }
    }

    /// Unwinds with [`OutOfTime`] if the attempt's time is up (in a build
    /// that aborts on panic, where nothing would catch it, never).
    fn look(&self) {
        if cfg!(panic = "unwind") && self.until.is_some_and(|until| Instant::now() >= until) {
            panic::resume_unwind(Box::new(OutOfTime));
        }
    }
}

impl Watched {
    /// A `width`×`height` image of `pixels` (row-major), read by an attempt
    /// that ends at `until`; `None` if the pixels do not fill it (or it is
    /// too large for the `image` crate).
    pub(super) fn new(
        width: usize,
        height: usize,
        pixels: Vec<u8>,
        until: Option<Instant>,
    ) -> Option<Self> {
        let (w, h) = (u32::try_from(width).ok()?, u32::try_from(height).ok()?);
        let image = GrayImage::from_raw(w, h, pixels)?;
        let watch = Rc::new(Watch {
            until,
            reads: Cell::new(0),
        });
        Some(Self { image, watch })
    }
}

impl Clone for Watched {
    /// rqrr copies the whole image for each group of finder patterns it
    /// tries, so a copy looks at the clock too.
    fn clone(&self) -> Self {
        self.watch.look();
        Self {
            image: self.image.clone(),
            watch: Rc::clone(&self.watch),
        }
    }
}

impl GenericImageView for Watched {
    type Pixel = Luma<u8>;

    fn dimensions(&self) -> (u32, u32) {
        // The alignment search asks for the size on each step, even off
        // the image where it reads no pixel.
        self.watch.tick();
        self.image.dimensions()
    }

    fn get_pixel(&self, x: u32, y: u32) -> Luma<u8> {
        self.watch.tick();
        *self.image.get_pixel(x, y)
    }
}

impl GenericImage for Watched {
    #[allow(deprecated)]
    fn get_pixel_mut(&mut self, x: u32, y: u32) -> &mut Luma<u8> {
        self.watch.tick();
        self.image.get_pixel_mut(x, y)
    }

    fn put_pixel(&mut self, x: u32, y: u32, pixel: Luma<u8>) {
        self.watch.tick();
        self.image.put_pixel(x, y, pixel);
    }

    #[allow(deprecated)]
    fn blend_pixel(&mut self, x: u32, y: u32, pixel: Luma<u8>) {
        self.watch.tick();
        self.image.blend_pixel(x, y, pixel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contain::contained;
    use std::time::Duration;

    #[test]
    fn reads_past_the_end_unwind_out_of_the_attempt_and_are_counted() {
        let before = crate::attempts_out_of_time();
        let image = Watched::new(4, 4, vec![0; 16], Some(Instant::now())).unwrap();
        let reads = Cell::new(0_u32);
        let out = contained(|| {
            loop {
                let _ = image.get_pixel(1, 1);
                reads.set(reads.get() + 1);
            }
        });
        assert!(out.is_none());
        assert_eq!(reads.get(), READS_PER_LOOK - 1, "stopped at the first look");
        assert!(crate::attempts_out_of_time() > before);
        // A copy looks at once.
        assert!(contained(|| image.clone()).is_none());
    }

    #[test]
    fn an_attempt_with_time_left_or_no_end_reads_on() {
        let later = Instant::now() + Duration::from_secs(600);
        for until in [Some(later), None] {
            let image = Watched::new(2, 2, vec![1, 2, 3, 4], until).unwrap();
            let sum = contained(|| {
                (0..10 * READS_PER_LOOK)
                    .map(|i| u32::from(image.get_pixel(i % 2, i / 2 % 2).0[0]))
                    .sum::<u32>()
            });
            assert_eq!(sum, Some(25 * READS_PER_LOOK));
            assert_eq!(image.clone().dimensions(), (2, 2));
        }
    }

    #[test]
    fn pixels_that_do_not_fill_the_image_are_refused() {
        assert!(Watched::new(3, 3, vec![0; 8], None).is_none());
        assert!(Watched::new(usize::MAX, 1, vec![0; 8], None).is_none());
    }
}
