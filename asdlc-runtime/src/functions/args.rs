//! A call's keys and arguments, one after another in one buffer ([`ArgList`]).

use redis::RedisWrite;

/// Arguments one after another in one buffer: a begin or commit call has a few hundred, and a
/// buffer each (as `Vec<Vec<u8>>` keeps them) was an allocation and a free per argument.
#[derive(Debug, Clone, Default)]
pub(crate) struct ArgList {
    data: Vec<u8>,
    /// Where each argument ends in `data`.
    ends: Vec<usize>,
}

impl ArgList {
    /// How many arguments.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Arguments `range`, in order.
    pub(super) fn slices(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = &[u8]> {
        range.map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.data[start..self.ends[i]]
        })
    }

    /// Every argument, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.slices(0..self.len())
    }
}

impl RedisWrite for ArgList {
    fn write_arg(&mut self, arg: &[u8]) {
        self.data.extend_from_slice(arg);
        self.ends.push(self.data.len());
    }

    /// Written in place, without the `String` the default makes (numbers, key names).
    fn write_arg_fmt(&mut self, arg: impl std::fmt::Display) {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = write!(self.data, "{arg}");
        self.ends.push(self.data.len());
    }

    fn writer_for_next_arg(&mut self) -> impl std::io::Write + '_ {
        /// Ends the argument when dropped.
        struct Next<'a>(&'a mut ArgList);
        impl std::io::Write for Next<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.data.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl Drop for Next<'_> {
            fn drop(&mut self) {
                self.0.ends.push(self.0.data.len());
            }
        }
        Next(self)
    }

    fn reserve_space_for_args(&mut self, additional: impl IntoIterator<Item = usize>) {
        let (mut n, mut bytes) = (0, 0);
        for size in additional {
            n += 1;
            bytes += size;
        }
        self.ends.reserve(n);
        self.data.reserve(bytes);
    }
}
