//! A reference producer: framed connections and a listening server over Unix sockets.
